//! This instance's counters since it started: reports accepted, duplicates, flagged for review,
//! and refusals by reason; and, per partner, how long after its placing each order was
//! acknowledged (the histogram is in the Prometheus series only). One source, three views, as the dispatcher's: Prometheus series
//! (`waybill_status_ingest_*`, see [`IngestMetrics::register`]), the `GetReportStats` RPC
//! (grpcurl-able) and a structured log line every stats interval.

use std::{collections::BTreeMap, sync::Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};
use waybill_token::RejectReason;

/// The label of the refusals counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why the report was refused (`bad_signature`, `not_routed`, …).
    pub reason: &'static str,
}

/// The label of the placed → acknowledged histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartnerLabel {
    /// The partner that acknowledged the order (an enrolled partner's id: accepted reports
    /// only, so the label's values are bounded by the partners enrolled).
    pub partner: String,
}

/// The placed → acknowledged histogram's buckets, in seconds: from an order acknowledged
/// within the same poll (tens of milliseconds) to one acknowledged after re-sends at the
/// handover deadline (default 10 min) or a partner outage (an hour).
pub const PLACED_TO_ACKNOWLEDGED_BUCKETS: [f64; 16] = [
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    3600.0,
];

/// Refusal names that are not token checks.
pub const OTHER_REASONS: [&str; 5] = [
    "invalid_argument",
    "not_routed",
    "dispatch_in_flight",
    "unavailable",
    "internal",
];

/// Counters of one StatusIngest instance.
#[derive(Debug)]
pub struct IngestMetrics {
    accepted: Counter,
    duplicates: Counter,
    flagged: Counter,
    waited_for_relay: Counter,
    rejected: Family<ReasonLabel, Counter>,
    placed_to_acknowledged: Family<PartnerLabel, Histogram>,
    /// Every reason seen or known, for the snapshot (a family cannot list its labels).
    reasons: Mutex<std::collections::BTreeSet<&'static str>>,
}

impl Default for IngestMetrics {
    fn default() -> Self {
        let rejected = Family::<ReasonLabel, Counter>::default();
        let reasons = RejectReason::ALL
            .iter()
            .map(|reason| reason.as_str())
            .chain(OTHER_REASONS)
            .inspect(|reason| {
                // Every known reason is exposed from the start, at 0.
                let _ = rejected.get_or_create(&ReasonLabel { reason });
            })
            .collect();
        Self {
            accepted: Counter::default(),
            duplicates: Counter::default(),
            flagged: Counter::default(),
            waited_for_relay: Counter::default(),
            rejected,
            placed_to_acknowledged: Family::new_with_constructor(|| {
                Histogram::new(PLACED_TO_ACKNOWLEDGED_BUCKETS)
            }),
            reasons: Mutex::new(reasons),
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
    /// Reports that overtook the relay's bookkeeping and waited for its commit.
    pub waited_for_relay: u64,
    /// Refusals by reason; every known reason present.
    pub rejected: BTreeMap<String, u64>,
}

impl IngestMetrics {
    /// Registers the Prometheus series (names without the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "reports_accepted",
            "Status reports accepted (flagged ones included)",
            self.accepted.clone(),
        );
        registry.register(
            "reports_duplicate",
            "Status reports answered as duplicates (same report id), nothing changed",
            self.duplicates.clone(),
        );
        registry.register(
            "reports_flagged_for_review",
            "Status reports accepted after a final state and flagged for review",
            self.flagged.clone(),
        );
        registry.register(
            "reports_waited_for_relay",
            "Status reports that overtook the relay's bookkeeping of their order's send and waited for its commit (then recorded, or refused as dispatch_in_flight past the wait)",
            self.waited_for_relay.clone(),
        );
        registry.register(
            "reports_rejected",
            "Status reports refused, by reason (token checks, invalid_argument, not_routed, ...)",
            self.rejected.clone(),
        );
        registry.register_with_unit(
            "placed_to_acknowledged",
            "Per partner: from an order's placing to the report that acknowledged its handover (dispatch ACKNOWLEDGED), by the services' clock",
            Unit::Seconds,
            self.placed_to_acknowledged.clone(),
        );
    }

    /// One more accepted report.
    pub fn add_accepted(&self, flagged: bool) {
        self.accepted.inc();
        if flagged {
            self.flagged.inc();
        }
    }

    /// An order `partner` acknowledged `after` its placing.
    pub fn observe_acknowledged(&self, partner: &str, after: std::time::Duration) {
        self.placed_to_acknowledged
            .get_or_create(&PartnerLabel {
                partner: partner.to_owned(),
            })
            .observe(after.as_secs_f64());
    }

    /// One more report that waited for the relay's commit.
    pub fn add_waited_for_relay(&self) {
        self.waited_for_relay.inc();
    }

    /// One more duplicate.
    pub fn add_duplicate(&self) {
        self.duplicates.inc();
    }

    /// One more refusal for `reason`.
    pub fn add_rejected(&self, reason: &'static str) {
        self.reasons
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(reason);
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// The counters now.
    pub fn snapshot(&self) -> IngestStats {
        let reasons: Vec<&'static str> = self
            .reasons
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .copied()
            .collect();
        IngestStats {
            accepted: self.accepted.get(),
            duplicates: self.duplicates.get(),
            flagged_for_review: self.flagged.get(),
            waited_for_relay: self.waited_for_relay.get(),
            rejected: reasons
                .into_iter()
                .map(|reason| {
                    let count = self.rejected.get_or_create(&ReasonLabel { reason }).get();
                    (reason.to_owned(), count)
                })
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
        assert_eq!(
            metrics.snapshot().rejected.get("dispatch_in_flight"),
            Some(&0)
        );
        metrics.add_rejected("bad_signature");
        metrics.add_rejected("bad_signature");
        metrics.add_accepted(true);
        let stats = metrics.snapshot();
        assert_eq!(stats.rejected.get("bad_signature"), Some(&2));
        assert_eq!((stats.accepted, stats.flagged_for_review), (1, 1));
    }

    #[test]
    fn placed_to_acknowledged_is_a_histogram_in_seconds_per_partner() {
        let metrics = IngestMetrics::default();
        metrics.observe_acknowledged("acme", std::time::Duration::from_millis(1500));
        metrics.observe_acknowledged("acme", std::time::Duration::from_secs(700));
        let mut registry = Registry::default();
        metrics.register(registry.sub_registry_with_prefix("waybill_status_ingest"));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        for line in [
            "# TYPE waybill_status_ingest_placed_to_acknowledged_seconds histogram",
            "# UNIT waybill_status_ingest_placed_to_acknowledged_seconds seconds",
            r#"waybill_status_ingest_placed_to_acknowledged_seconds_count{partner="acme"} 2"#,
            r#"waybill_status_ingest_placed_to_acknowledged_seconds_sum{partner="acme"} 701.5"#,
            r#"waybill_status_ingest_placed_to_acknowledged_seconds_bucket{le="2.5",partner="acme"} 1"#,
            r#"waybill_status_ingest_placed_to_acknowledged_seconds_bucket{le="1800.0",partner="acme"} 2"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
