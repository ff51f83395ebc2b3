//! The process's own series, under the names Prometheus' client libraries use
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`,
//! `process_start_time_seconds`), read from `/proc/self` at each scrape. Every
//! [`Metrics`](crate::metrics::Metrics) registry carries them once, so each process (or
//! `waybill dev`'s one registry) exports them once. Off Linux there is no `/proc`: nothing is
//! exported.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

/// Linux's clock ticks per second for `/proc` times (`USER_HZ`, 100 on every mainstream
/// architecture; `sysconf(_SC_CLK_TCK)` would need `unsafe` for the same answer).
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads `/proc/self` when scraped.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// What `/proc/self` says now.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    resident_bytes: i64,
    open_fds: i64,
    start_time_seconds: f64,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sample) = read() else {
            return Ok(());
        };
        let cpu = encoder.encode_descriptor(
            "process_cpu",
            "User and system CPU time spent",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        ConstCounter::new(sample.cpu_seconds).encode(cpu)?;
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                sample.resident_bytes as f64,
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                None,
                sample.open_fds as f64,
            ),
            (
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(Unit::Seconds),
                sample.start_time_seconds,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let gauge = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
            ConstGauge::new(value).encode(gauge)?;
        }
        Ok(())
    }
}

fn read() -> Option<Sample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
    parse(&stat, &status, &boot, open_fds)
}

/// The sample from the texts of `/proc/self/stat`, `/proc/self/status` and `/proc/stat`.
fn parse(stat: &str, status: &str, boot: &str, open_fds: usize) -> Option<Sample> {
    // The command name (field 2) is in parentheses and may hold spaces: fields count from the
    // last ')'. After it: state is field 3, utime 14, stime 15, starttime 22.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    let cpu_seconds = (field(14)? + field(15)?) / TICKS_PER_SECOND;
    let started_after_boot = field(22)? / TICKS_PER_SECOND;
    let boot_time: f64 = boot
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let resident_kib: i64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(Sample {
        cpu_seconds,
        resident_bytes: resident_kib * 1024,
        open_fds: i64::try_from(open_fds).unwrap_or(i64::MAX),
        start_time_seconds: boot_time + started_after_boot,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_memory_fds_and_start_from_proc_texts() {
        let stat = "4242 (waybill dev) S 1 4242 4242 0 -1 4194560 2000 0 0 0 250 50 0 0 20 0 9 0 \
                    12345 1000000 5000 18446744073709551615";
        let status = "Name:\twaybill\nVmHWM:\t  40000 kB\nVmRSS:\t   30000 kB\nThreads:\t9\n";
        let boot = "cpu  1 2 3\nbtime 1765000000\nprocesses 10\n";
        let sample = parse(stat, status, boot, 17).unwrap();
        assert_eq!(sample.cpu_seconds, 3.0, "(250 + 50) ticks");
        assert_eq!(sample.resident_bytes, 30_000 * 1024);
        assert_eq!(sample.open_fds, 17);
        assert_eq!(sample.start_time_seconds, 1_765_000_000.0 + 123.45);
        assert_eq!(parse("garbage", status, boot, 1), None);
    }

    #[test]
    fn this_process_reads_itself() {
        if cfg!(target_os = "linux") {
            let sample = read().unwrap();
            assert!(sample.resident_bytes > 0 && sample.open_fds > 0);
        }
    }
}
