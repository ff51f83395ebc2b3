//! This instance's counters since it started: reports accepted, duplicates, flagged for review,
//! and refusals by reason. Exposed with no exporter dependency, as the dispatcher's are: the
//! `GetReportStats` RPC (grpcurl-able) and a structured log line every stats interval.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use waybill_token::RejectReason;

/// Refusal names that are not token checks.
pub const OTHER_REASONS: [&str; 4] = ["invalid_argument", "not_routed", "unavailable", "internal"];

/// Counters of one StatusIngest instance.
#[derive(Debug)]
pub struct IngestMetrics {
    accepted: AtomicU64,
    duplicates: AtomicU64,
    flagged: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
}

impl Default for IngestMetrics {
    fn default() -> Self {
        let rejected = RejectReason::ALL
            .iter()
            .map(|reason| reason.as_str())
            .chain(OTHER_REASONS)
            .map(|name| (name, 0))
            .collect();
        Self {
            accepted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            flagged: AtomicU64::new(0),
            rejected: Mutex::new(rejected),
        }
    }
}

/// A copy of the counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IngestStats {
    /// Reports accepted (flagged ones included).
    pub accepted: u64,
    /// Duplicates answered.
    pub duplicates: u64,
    /// Accepted after a final state.
    pub flagged_for_review: u64,
    /// Refusals by reason; every known reason present.
    pub rejected: BTreeMap<String, u64>,
}

impl IngestMetrics {
    /// One more accepted report.
    pub fn add_accepted(&self, flagged: bool) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        if flagged {
            self.flagged.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One more duplicate.
    pub fn add_duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// One more refusal for `reason`.
    pub fn add_rejected(&self, reason: &'static str) {
        let mut rejected = self
            .rejected
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *rejected.entry(reason).or_default() += 1;
    }

    /// The counters now.
    pub fn snapshot(&self) -> IngestStats {
        IngestStats {
            accepted: self.accepted.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            flagged_for_review: self.flagged.load(Ordering::Relaxed),
            rejected: self
                .rejected
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .iter()
                .map(|(name, count)| ((*name).to_owned(), *count))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_from_the_start_and_counts() {
        let metrics = IngestMetrics::default();
        assert_eq!(metrics.snapshot().rejected.get("bad_signature"), Some(&0));
        assert_eq!(metrics.snapshot().rejected.get("not_routed"), Some(&0));
        metrics.add_rejected("bad_signature");
        metrics.add_rejected("bad_signature");
        metrics.add_accepted(true);
        let stats = metrics.snapshot();
        assert_eq!(stats.rejected.get("bad_signature"), Some(&2));
        assert_eq!((stats.accepted, stats.flagged_for_review), (1, 1));
    }
}
