//! One step of `bench e2e`: wait for the relay to finish what an earlier step left, offer a
//! rate for a while (open loop), wait for the step's orders to come through (until every
//! report is confirmed, the loop goes quiet, or the drain timeout), then read the database
//! once for the ledger and the `RECEIVED_BY_PARTNER` times, and cut every order's journey into
//! hops.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;
use tonic::transport::Channel;
use waybill_proto::v1::order_service_client::OrderServiceClient;
use waybill_service_kit::db::Database;

use super::{
    cpu::{CpuFigures, CpuStart},
    hops::{self, Hops},
    ledger::{self, CutOff, Ledger},
    load::{self, Placed, Sample},
    timeline::{Mark, Timeline, Track},
};
use crate::bench::measure::{Latency, new_histogram};

/// The running loop the steps are offered to.
pub(super) struct Loop {
    pub(super) clients: Vec<OrderServiceClient<Channel>>,
    pub(super) timeline: Arc<Timeline>,
    pub(super) db: Database,
    /// This run's id (in every idempotency key).
    pub(super) run: String,
    /// No step by any order for this long: the loop is quiet.
    pub(super) quiet: Duration,
    /// The longest wait for a step's orders after its last was offered.
    pub(super) drain_timeout: Duration,
    /// Whether observers in this process see the connector's steps (false when the services
    /// run as processes of their own: only placing and `RECEIVED_BY_PARTNER` are seen).
    pub(super) answers_seen: bool,
}

/// What one step measured.
#[derive(Debug, Clone, Serialize)]
pub(super) struct StepReport {
    pub(super) rate_per_s: f64,
    pub(super) duration_s: f64,
    /// Seconds the step waited, before offering, for the relay to have nothing due and no
    /// history event left to publish (what an earlier step left behind).
    pub(super) settled_s: f64,
    pub(super) offered: u64,
    pub(super) placed: u64,
    pub(super) errors: u64,
    /// Orders not placed because Orders refused them at the door (shedding load) after the
    /// retries the budget allowed: not errors, not losses (the caller was told).
    pub(super) refused_at_door: u64,
    /// Orders placed after the door refused them at least once.
    pub(super) placed_on_retry: u64,
    /// Calls refused at the door in all.
    pub(super) refusals: u64,
    pub(super) behind_schedule: u64,
    pub(super) max_behind_ms: f64,
    /// Why the wait for the step's orders ended, and how long after the last was offered.
    pub(super) cut_off: CutOff,
    pub(super) cut_off_after_s: f64,
    #[serde(flatten)]
    pub(super) hops: Hops,
    /// Scheduled → received over every order placed, one not received by the cut-off counted
    /// at the cut-off (a lower bound): what `--find-max` judges a step by.
    pub(super) to_received_all_ms: Latency,
    /// How much the backlog (placed, report not yet confirmed; sampled each second) grew over
    /// the step by its least-squares slope, in seconds of offered orders.
    pub(super) backlog_growth_s: f64,
    pub(super) backlog: Vec<Sample>,
    pub(super) ledger: Ledger,
    /// The CPU the step took (offering and the wait for its orders), per order placed.
    pub(super) cpu: CpuFigures,
}

#[cfg(test)]
impl StepReport {
    /// A step at `rate_per_s` that placed `placed` of `offered` orders, every placed order
    /// received, the ledger balanced, nothing late: the tests change what they judge.
    pub(super) fn for_test(rate_per_s: f64, offered: u64, placed: u64) -> Self {
        Self {
            rate_per_s,
            duration_s: 10.0,
            settled_s: 0.0,
            offered,
            placed,
            errors: 0,
            refused_at_door: 0,
            placed_on_retry: 0,
            refusals: 0,
            behind_schedule: 0,
            max_behind_ms: 0.0,
            cut_off: CutOff::AllConfirmed,
            cut_off_after_s: 0.1,
            hops: Hops::default(),
            to_received_all_ms: crate::bench::measure::Latency {
                p50: 10.0,
                p99: 50.0,
                max: 80.0,
            },
            backlog_growth_s: 0.0,
            backlog: Vec::new(),
            ledger: Ledger {
                placed,
                received: placed,
                balanced: true,
                answers_checked: true,
                ..Ledger::default()
            },
            cpu: CpuFigures::default(),
        }
    }
}

impl Loop {
    /// Offers `rate` orders a second for `duration` as step `index`, and measures it.
    pub(super) async fn step(
        &self,
        index: u32,
        rate: f64,
        duration: Duration,
    ) -> anyhow::Result<StepReport> {
        let prefix = format!("e2e-{}-{index}-", self.run);
        let settled = self.settle().await?;
        let confirmed_before = self.timeline.confirmed();
        let cpu_start = CpuStart::now();
        let offered = load::offer(&self.clients, &self.timeline, &prefix, rate, duration).await?;
        let offered_at = Instant::now();
        let cut_off = self.wait(&offered.placed, confirmed_before).await;
        let cpu = cpu_start.until_now(offered.placed.len() as u64);
        let cut_off_at = self.timeline.now();
        let found = ledger::read(&self.db, &prefix).await?;
        let tracks = self.timeline.tracks(offered.placed.iter().map(|p| p.id));
        let reckoning = ledger::reckon(
            &offered.placed,
            &tracks,
            self.answers_seen,
            &offered.failed,
            found,
            &prefix,
            cut_off,
            self.quiet,
        );
        let hops = hops::measure(
            &self.timeline,
            &offered.placed,
            &tracks,
            &reckoning.received_at,
        )?;
        let mut all = new_histogram()?;
        for (order, received) in offered.placed.iter().zip(&reckoning.received_at) {
            let at = received
                .and_then(|at| self.timeline.wall_micros(at))
                .unwrap_or(cut_off_at);
            all.saturating_record(at.saturating_sub(order.scheduled).max(1));
        }
        Ok(StepReport {
            rate_per_s: rate,
            duration_s: duration.as_secs_f64(),
            settled_s: settled.as_secs_f64(),
            offered: offered.offered,
            placed: offered.placed.len() as u64,
            errors: offered.failed.len() as u64 - offered.refused,
            refused_at_door: offered.refused,
            placed_on_retry: offered.placed_on_retry,
            refusals: offered.refusals,
            behind_schedule: offered.behind_schedule,
            max_behind_ms: offered.max_behind.as_secs_f64() * 1000.0,
            cut_off,
            cut_off_after_s: offered_at.elapsed().as_secs_f64(),
            hops,
            to_received_all_ms: Latency::of(&all),
            backlog_growth_s: growth(&offered.samples) * duration.as_secs_f64() / rate,
            backlog: offered.samples,
            ledger: reckoning.ledger,
            cpu,
        })
    }

    /// Waits until the relay has nothing due and no history event waiting to be published,
    /// at most the drain timeout (then the step starts anyway, and says how long it waited):
    /// each step starts on a loop that finished the previous one's work.
    async fn settle(&self) -> anyhow::Result<Duration> {
        let store = waybill_dispatcher::store::for_database(&self.db);
        let started = Instant::now();
        loop {
            let backlog = store.backlog(chrono::Utc::now()).await?;
            let settled =
                backlog.oldest_due_at.is_none() && backlog.oldest_unpublished_at.is_none();
            if settled || started.elapsed() >= self.drain_timeout {
                return Ok(started.elapsed());
            }
            // The relay's progress is in the database only: look again shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every order of `placed` has its report confirmed, the loop goes quiet, or
    /// the drain timeout runs out; woken by each confirmation.
    async fn wait(&self, placed: &[Placed], confirmed_before: u64) -> CutOff {
        let started = Instant::now();
        let mut confirmations = self.timeline.watch_confirmed();
        let mut last_progress = Instant::now();
        loop {
            let confirmed = confirmations
                .borrow_and_update()
                .saturating_sub(confirmed_before);
            // The count may include other steps' late orders: check this step's own.
            if confirmed >= placed.len() as u64 && self.all_confirmed(placed) {
                return CutOff::AllConfirmed;
            }
            if self.timeline.quiet_for() >= self.quiet {
                return CutOff::Quiet;
            }
            if started.elapsed() >= self.drain_timeout {
                return CutOff::Timeout;
            }
            if last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                eprintln!(
                    "  waiting for {} orders' reports…",
                    (placed.len() as u64).saturating_sub(confirmed)
                );
            }
            // Each second at least, to notice quiet and the timeout.
            let _ = tokio::time::timeout(Duration::from_secs(1), confirmations.changed()).await;
        }
    }

    fn all_confirmed(&self, placed: &[Placed]) -> bool {
        self.timeline
            .tracks(placed.iter().map(|p| p.id))
            .iter()
            .all(|track| track.is_some_and(|t: Track| t.at(Mark::ReportConfirmed).is_some()))
    }
}

/// The least-squares slope of the backlog over time (orders per second); 0 with fewer than
/// two samples.
pub(super) fn growth(samples: &[Sample]) -> f64 {
    if samples.len() < 2 {
        return 0.0;
    }
    let n = samples.len() as f64;
    let mean_t = samples.iter().map(|s| s.at_s).sum::<f64>() / n;
    let mean_b = samples.iter().map(|s| s.backlog as f64).sum::<f64>() / n;
    let (mut covariance, mut variance) = (0.0, 0.0);
    for sample in samples {
        covariance += (sample.at_s - mean_t) * (sample.backlog as f64 - mean_b);
        variance += (sample.at_s - mean_t).powi(2);
    }
    if variance > 0.0 {
        covariance / variance
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(backlogs: &[u64]) -> Vec<Sample> {
        (1..)
            .zip(backlogs)
            .map(|(at, backlog)| Sample {
                at_s: f64::from(at),
                backlog: *backlog,
            })
            .collect()
    }

    #[test]
    fn a_steady_backlog_does_not_grow_and_a_rising_one_does() {
        assert!(growth(&samples(&[20, 22, 19, 21, 20, 20])).abs() < 0.5);
        let rising = growth(&samples(&[100, 200, 300, 400, 500]));
        assert!((rising - 100.0).abs() < 1e-9, "{rising}");
        assert_eq!(growth(&samples(&[5])), 0.0);
    }
}
