//! What a step cost in CPU: this process's time and the whole machine's busy time over the
//! step (offering and the wait for its orders), each per order placed. The machine's figure
//! holds everything the loop needs — Postgres, the broker, every service — and anything else
//! that ran meanwhile, which its busy share shows: a loop that needs 3 ms of CPU an order
//! cannot answer in milliseconds at 700 orders a second on two cores, whatever it waits for.

use serde::Serialize;

use crate::bench::measure::process_cpu_seconds;

/// CPU ticks of the whole machine, from the `cpu ` line of `/proc/stat` (USER_HZ ticks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MachineTicks {
    /// user, nice, system, irq and softirq: work done on this machine's CPUs.
    busy: u64,
    /// busy plus idle, iowait and steal: the CPUs' whole time.
    total: u64,
}

impl MachineTicks {
    /// Parses `/proc/stat`; `None` without a `cpu ` line of at least eight numbers.
    pub(super) fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find_map(|line| line.strip_prefix("cpu "))?;
        let values: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = values[..] else {
            return None;
        };
        let busy = user + nice + system + irq + softirq;
        Some(Self {
            busy,
            total: busy + idle + iowait + steal,
        })
    }

    fn now() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }
}

/// Where a step's CPU readings start.
#[derive(Debug, Clone, Copy)]
pub(super) struct CpuStart {
    process_s: Option<f64>,
    machine: Option<MachineTicks>,
}

impl CpuStart {
    /// Reads both clocks now.
    pub(super) fn now() -> Self {
        Self {
            process_s: process_cpu_seconds(),
            machine: MachineTicks::now(),
        }
    }

    /// The figures from here to now, over `orders` placed.
    pub(super) fn until_now(self, orders: u64) -> CpuFigures {
        CpuFigures::between(
            self,
            CpuStart::now(),
            orders,
            std::thread::available_parallelism().map_or(1, usize::from),
        )
    }
}

/// A step's CPU, per order placed (`None` where `/proc` cannot be read, or no order was).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(super) struct CpuFigures {
    /// This process's CPU time (user + system) an order, in milliseconds.
    pub(super) process_ms_per_order: Option<f64>,
    /// The whole machine's busy CPU time an order, in milliseconds.
    pub(super) machine_ms_per_order: Option<f64>,
    /// The machine's busy share of its CPUs' time over the step (0 to 1).
    pub(super) machine_busy: Option<f64>,
    /// CPUs this process may run on.
    pub(super) cpus: usize,
}

impl CpuFigures {
    fn between(start: CpuStart, end: CpuStart, orders: u64, cpus: usize) -> Self {
        let per_order = |seconds: f64| (orders > 0).then(|| seconds * 1000.0 / orders as f64);
        let machine = start.machine.zip(end.machine).map(|(a, b)| {
            (
                b.busy.saturating_sub(a.busy),
                b.total.saturating_sub(a.total),
            )
        });
        Self {
            process_ms_per_order: start
                .process_s
                .zip(end.process_s)
                .and_then(|(a, b)| per_order(b - a)),
            // USER_HZ is 100 for user space on Linux.
            machine_ms_per_order: machine.and_then(|(busy, _)| per_order(busy as f64 / 100.0)),
            machine_busy: machine
                .and_then(|(busy, total)| (total > 0).then(|| busy as f64 / total as f64)),
            cpus,
        }
    }

    /// One line for the text report; `processes`: the services ran as processes of their own
    /// (this process's share is then the load generator's and the ledger's only).
    pub(super) fn to_text(self, processes: bool) -> String {
        let ms = |v: Option<f64>| v.map_or_else(|| "unknown".to_owned(), |v| format!("{v:.2} ms"));
        let busy = self
            .machine_busy
            .map_or_else(|| "unknown".to_owned(), |b| format!("{:.0} %", b * 100.0));
        format!(
            "  CPU an order: {} on the whole machine (Postgres, the broker and anything else \
             running included; {busy} busy over its {} CPUs), {} in this process{}",
            ms(self.machine_ms_per_order),
            self.cpus,
            ms(self.process_ms_per_order),
            if processes {
                " (load and ledger only)"
            } else {
                ""
            }
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  1000 50 300 8000 100 20 30 40 0 0\n\
                        cpu0 500 25 150 4000 50 10 15 20 0 0\n\
                        intr 12345\n";

    #[test]
    fn reads_busy_and_total_ticks_of_every_cpu() {
        assert_eq!(
            MachineTicks::parse(STAT),
            Some(MachineTicks {
                busy: 1000 + 50 + 300 + 20 + 30,
                total: 1400 + 8000 + 100 + 40,
            })
        );
        assert_eq!(MachineTicks::parse("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(MachineTicks::parse("cpu  1 2 3\n"), None);
        assert_eq!(MachineTicks::parse("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn figures_are_per_order_placed_and_busy_is_a_share_of_the_cpus_time() {
        let start = CpuStart {
            process_s: Some(10.0),
            machine: Some(MachineTicks {
                busy: 1_000,
                total: 4_000,
            }),
        };
        let end = CpuStart {
            process_s: Some(11.5),
            // 3 s of CPU busy out of 4 s of two CPUs' time.
            machine: Some(MachineTicks {
                busy: 1_300,
                total: 4_400,
            }),
        };
        let figures = CpuFigures::between(start, end, 1_000, 2);
        assert!((figures.process_ms_per_order.unwrap() - 1.5).abs() < 1e-9);
        assert!((figures.machine_ms_per_order.unwrap() - 3.0).abs() < 1e-9);
        assert!((figures.machine_busy.unwrap() - 0.75).abs() < 1e-9);

        let none = CpuFigures::between(start, end, 0, 2);
        assert_eq!(none.process_ms_per_order, None);
        assert_eq!(none.machine_ms_per_order, None);
        let unreadable = CpuStart {
            process_s: None,
            machine: None,
        };
        assert_eq!(
            CpuFigures::between(unreadable, end, 10, 2).machine_busy,
            None
        );
    }
}
