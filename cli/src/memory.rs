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

/// Applies the settings above (see the module doc). Does nothing off glibc.
pub(crate) fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (variable, parameter, value) in [
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
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: mallopt sets one of malloc's tunables and touches no memory of ours; it
            // is called before the runtime starts any thread, and glibc takes its own lock.
            #[allow(unsafe_code)]
            unsafe {
                libc::mallopt(parameter, value);
            }
        }
    }
}
