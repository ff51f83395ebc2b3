//! The poll thread's decisions for its partitions, besides the ledger's: when a partition is
//! paused and resumed (a bounded number of records in flight), and when the safe offsets are
//! committed and the lag measured.
//!
//! | state | what happened | decision |
//! | --- | --- | --- |
//! | consuming | a record arrived, `max_in_flight` records now in flight | [`pause`]: stop fetching the partition |
//! | paused | records finished, half of `max_in_flight` or fewer in flight | [`resume`] |
//! | any | the commit interval passed since the last commit | [`Cadence::commit_due`]: commit every safe offset that moved |
//! | any | the lag interval passed (or the retry delay, after a measurement that missed a partition) | [`Cadence::lag_due`] |
//!
//! The cadence runs on the poll thread's monotonic time ([`Instant`]), not on the connector's
//! [`Clock`](crate::clock::Clock): it only paces work (a commit names what is safe, never a
//! time), and a wall clock set back must not stop the commits. The tests give it fixed instants.

use std::time::{Duration, Instant};

/// How often the lag is measured.
pub const LAG_INTERVAL: Duration = Duration::from_secs(15);
/// How soon a lag measurement that could not reach every partition's watermark (a busy broker)
/// is tried again.
pub const LAG_RETRY: Duration = Duration::from_secs(1);

/// Whether to pause a partition holding `in_flight` records (at most `max_in_flight`).
pub fn pause(in_flight: usize, max_in_flight: usize, paused: bool) -> bool {
    !paused && in_flight >= max_in_flight
}

/// Whether to resume a paused partition holding `in_flight` records: once half of
/// `max_in_flight` or fewer are left, so that it does not flap at the bound.
pub fn resume(in_flight: usize, max_in_flight: usize, paused: bool) -> bool {
    paused && in_flight <= max_in_flight / 2
}

/// When the poll thread commits and measures the lag next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    commit_interval: Duration,
    last_commit: Instant,
    next_lag: Instant,
}

impl Cadence {
    /// Started at `now`: the first commit one interval later, the first lag measurement one
    /// lag interval later.
    pub fn new(commit_interval: Duration, now: Instant) -> Self {
        Self {
            commit_interval,
            last_commit: now,
            next_lag: now + LAG_INTERVAL,
        }
    }

    /// Whether a commit is due at `now`.
    pub fn commit_due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_commit) >= self.commit_interval
    }

    /// A commit was made at `now` (whether or not it succeeded: a failed one is retried at
    /// the next interval).
    pub fn committed(&mut self, now: Instant) {
        self.last_commit = now;
    }

    /// Whether a lag measurement is due at `now`.
    pub fn lag_due(&self, now: Instant) -> bool {
        now >= self.next_lag
    }

    /// The lag was measured at `now`; `complete` when every partition's watermark was read.
    pub fn lag_measured(&mut self, now: Instant, complete: bool) {
        self.next_lag = now + if complete { LAG_INTERVAL } else { LAG_RETRY };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 512;

    #[test]
    fn a_partition_is_paused_at_the_in_flight_bound() {
        assert!(pause(MAX, MAX, false));
        assert!(!pause(MAX - 1, MAX, false));
        assert!(!pause(MAX + 3, MAX, true), "paused already");
    }

    #[test]
    fn a_paused_partition_resumes_at_half_the_bound() {
        assert!(resume(MAX / 2, MAX, true));
        assert!(!resume(MAX / 2 + 1, MAX, true), "no flapping at the bound");
        assert!(!resume(0, MAX, false), "not paused");
    }

    #[test]
    fn safe_offsets_are_committed_once_per_interval() {
        let start = Instant::now();
        let interval = Duration::from_millis(500);
        let mut cadence = Cadence::new(interval, start);
        assert!(!cadence.commit_due(start));
        assert!(!cadence.commit_due(start + Duration::from_millis(499)));
        assert!(cadence.commit_due(start + interval));
        cadence.committed(start + interval);
        assert!(!cadence.commit_due(start + Duration::from_millis(900)));
        assert!(cadence.commit_due(start + 2 * interval));
    }

    #[test]
    fn the_lag_is_measured_each_interval_and_retried_soon_when_incomplete() {
        let start = Instant::now();
        let mut cadence = Cadence::new(Duration::from_millis(500), start);
        assert!(!cadence.lag_due(start + LAG_INTERVAL - Duration::from_millis(1)));
        let at = start + LAG_INTERVAL;
        assert!(cadence.lag_due(at));
        cadence.lag_measured(at, false);
        assert!(!cadence.lag_due(at + LAG_RETRY - Duration::from_millis(1)));
        assert!(cadence.lag_due(at + LAG_RETRY), "a busy broker: again soon");
        cadence.lag_measured(at + LAG_RETRY, true);
        assert!(!cadence.lag_due(at + LAG_RETRY + LAG_RETRY));
        assert!(cadence.lag_due(at + LAG_RETRY + LAG_INTERVAL));
    }
}
