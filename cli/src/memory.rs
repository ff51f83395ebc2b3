//! The process's malloc set-up, made first thing in `main`.
//!
//! glibc's malloc gives a thread that finds every arena locked an arena of its own, up to eight
//! per core, and memory freed in one arena cannot serve another. A Waybill process runs tokio's
//! workers and blocking pool, librdkafka's threads (main, background, one per broker) and
//! SQLite's, sixteen threads in the partner's connector: under load each ends up with an arena.
//! glibc also raises its mmap threshold (up to 32 MiB) each time a large block is freed, so
//! librdkafka's decompressed record sets and other large buffers move from mmap, returned on
//! free, into the arenas, where they fragment. Measured (`docs/benchmarks.md`, overload at
//! 2,200 orders/s, each service its own process): the partner's connector grew to 83–85 MiB
//! with seven arenas; capped at two arenas and fixed thresholds, 63.9 MiB (one arena: 62.1),
//! the CPU time the same (96–97 s against 98–104 s).
//!
//! Each setting yields to the operator's own `MALLOC_*` environment variable (which glibc reads
//! itself), so a deployment can still tune them.

/// Arenas at most: threads share them (an arena's lock is held for well under a microsecond).
/// One arena measured 2 MiB lower than two at the same CPU time on two cores; two leave room
/// on bigger machines.
const ARENAS: i32 = 2;
/// Blocks this large or larger are mmapped and given back when freed, whatever was freed before.
const MMAP_THRESHOLD: i32 = 128 * 1024;
/// Free memory at the top of the heap beyond this is given back.
const TRIM_THRESHOLD: i32 = 128 * 1024;

/// The tunables to set: each of the settings above whose `MALLOC_*` variable `is_set` does not
/// report set (glibc reads that one itself), as (variable, mallopt parameter, value).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn to_set(is_set: impl Fn(&str) -> bool) -> Vec<(&'static str, libc::c_int, libc::c_int)> {
    [
        ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, ARENAS),
        (
            "MALLOC_MMAP_THRESHOLD_",
            libc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD,
        ),
        (
            "MALLOC_TRIM_THRESHOLD_",
            libc::M_TRIM_THRESHOLD,
            TRIM_THRESHOLD,
        ),
    ]
    .into_iter()
    .filter(|(variable, _, _)| !is_set(variable))
    .collect()
}

/// Sets one tunable; whether glibc took it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn mallopt(parameter: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: mallopt sets one of malloc's tunables and touches no memory of ours; glibc takes
    // its own lock, so it is sound from any thread (main calls it before the runtime starts
    // any).
    #[allow(unsafe_code)]
    let taken = unsafe { libc::mallopt(parameter, value) };
    taken == 1
}

/// Applies the settings above (see the module doc). Does nothing off glibc.
pub(crate) fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (variable, parameter, value) in to_set(|variable| std::env::var_os(variable).is_some()) {
        if !mallopt(parameter, value) {
            // Nothing is logged yet (main has not set up tracing): say it on stderr.
            eprintln!("warning: glibc refused mallopt for {variable} = {value}");
        }
    }
}

#[cfg(test)]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_made_unless_the_operator_set_its_variable() {
        let all = to_set(|_| false);
        assert_eq!(
            all,
            [
                ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 2),
                ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 131_072),
                ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, 131_072),
            ]
        );
        let operator_tuned = to_set(|variable| variable == "MALLOC_ARENA_MAX");
        assert_eq!(
            operator_tuned
                .iter()
                .map(|(variable, _, _)| *variable)
                .collect::<Vec<_>>(),
            ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
        );
    }

    #[test]
    fn glibc_takes_each_setting() {
        // mallopt answers 0 for a setting it does not take: each of ours must be taken.
        for (variable, parameter, value) in to_set(|_| false) {
            assert!(mallopt(parameter, value), "{variable} = {value} refused");
        }
    }
}
