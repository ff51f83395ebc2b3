//! What every benchmark measures with: a count over a time ([`Rate`]), latency histograms and
//! their percentiles ([`Latency`]), and what `/proc` says about this process and the host (CPU
//! time, steal time, peak RSS). A leaf: it uses no other bench module.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A count over a time.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rate {
    pub(crate) orders: usize,
    pub(crate) seconds: f64,
    pub(crate) orders_per_second: f64,
}

impl Rate {
    pub(crate) fn new(orders: usize, elapsed: Duration) -> Self {
        Self {
            orders,
            seconds: elapsed.as_secs_f64(),
            orders_per_second: orders as f64 / elapsed.as_secs_f64().max(1e-9),
        }
    }

    /// Both counts over both times.
    pub(crate) fn plus(self, other: Self) -> Self {
        Self::new(
            self.orders + other.orders,
            Duration::from_secs_f64(self.seconds + other.seconds),
        )
    }
}

/// Percentiles of a latency, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

impl Latency {
    /// The percentiles of a histogram of microseconds (all zero when it is empty).
    pub(crate) fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

/// 1 µs to 1 hour at 3 significant digits.
pub(crate) fn new_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
}

/// The URL without its password, for printing.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// "12.3 MiB", or "unknown".
pub(crate) fn mib_text(mib: Option<f64>) -> String {
    mib.map_or_else(|| "unknown".to_owned(), |mib| format!("{mib:.1} MiB"))
}

/// CPU time (user + system) this process has used so far, in seconds (Linux; `None`
/// elsewhere). `/proc` counts it in USER_HZ ticks, which Linux fixes at 100 for user space.
pub(crate) fn process_cpu_seconds() -> Option<f64> {
    cpu_seconds_in(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// [`process_cpu_seconds`] of another process, `pid`.
pub(crate) fn process_cpu_seconds_of(pid: u32) -> Option<f64> {
    cpu_seconds_in(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// User + system time in a `/proc/<pid>/stat` line, in seconds.
fn cpu_seconds_in(stat: &str) -> Option<f64> {
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU time the host took from this machine so far (steal time), in seconds, over all its CPUs
/// (Linux; `None` elsewhere). A virtual machine whose host is busy runs slower for a while;
/// a figure measured meanwhile says more about the host than about the build.
pub(crate) fn host_steal_seconds() -> Option<f64> {
    // `cpu  user nice system idle iowait irq softirq steal …`, in USER_HZ ticks.
    Some(proc_field("/proc/stat", "cpu ", 7)? / 100.0)
}

/// Awaits `phase`, setting `steal` to the steal time the host took meanwhile.
pub(crate) async fn with_steal<T>(
    steal: &mut Option<f64>,
    phase: impl std::future::Future<Output = T>,
) -> T {
    let before = host_steal_seconds();
    let out = phase.await;
    *steal = before.zip(host_steal_seconds()).map(|(a, b)| b - a);
    out
}

/// The process's peak resident set size (Linux: `VmHWM`).
pub(crate) fn peak_rss_mib() -> Option<f64> {
    // `VmHWM:     12345 kB`.
    Some(proc_field("/proc/self/status", "VmHWM:", 0)? / 1024.0)
}

/// The number `field` (from 0, split at whitespace) after `prefix` on the first line of the
/// `/proc` file `path` that starts with it.
fn proc_field(path: &str, prefix: &str, field: usize) -> Option<f64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix(prefix))?
        .split_whitespace()
        .nth(field)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn process_cpu_time_counts_work_done() {
        let Some(before) = process_cpu_seconds() else {
            return; // no /proc here
        };
        // Busy until the count shows a tenth of a second more. On a loaded machine that takes
        // longer than a tenth in wall time, so the bound is generous; a count that never
        // moves fails.
        let started = Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after - before < 0.1 && started.elapsed() < Duration::from_secs(30) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            after = process_cpu_seconds().expect("readable twice");
        }
        assert!(after - before >= 0.1, "{before} s before, {after} s after");
    }

    #[test]
    fn steal_time_is_read_where_linux_counts_it() {
        let Some(first) = host_steal_seconds() else {
            assert!(
                std::fs::metadata("/proc/stat").is_err(),
                "/proc/stat is there but its steal time was not read"
            );
            return;
        };
        let second = host_steal_seconds().expect("readable twice");
        assert!(first >= 0.0 && second >= first, "{first} then {second}");
    }

    #[test]
    fn percentiles_of_a_histogram_and_of_none() {
        let mut histogram = new_histogram().expect("valid bounds");
        for ms in 1..=100u64 {
            histogram.record(ms * 1000).expect("in bounds");
        }
        let latency = Latency::of(&histogram);
        assert!((latency.p50 - 50.0).abs() < 0.1, "{latency:?}");
        assert!((latency.p99 - 99.0).abs() < 0.1, "{latency:?}");
        assert!((latency.max - 100.0).abs() < 0.1, "{latency:?}");
        assert_eq!(
            Latency::of(&new_histogram().expect("valid bounds")),
            Latency::default()
        );
    }

    #[test]
    fn rates_add_counts_and_times() {
        let both =
            Rate::new(100, Duration::from_secs(1)).plus(Rate::new(300, Duration::from_secs(1)));
        assert_eq!(both.orders, 400);
        assert!((both.orders_per_second - 200.0).abs() < 1e-9);
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }
}
