//! The relay's in-process metrics: counters since start and a produce-latency histogram. The
//! backlog (rows by state, age of the oldest due row) is read from the database when asked,
//! since only the database knows it across instances.
//!
//! Exposed two ways, with no exporter dependency: the `GetRelayStats` admin RPC (grpcurl-able)
//! and a structured log line every `--stats-interval` (for log-based alerting).

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;

/// Counters and the latency histogram of one relay.
#[derive(Debug)]
pub struct RelayMetrics {
    sent: AtomicU64,
    retries: AtomicU64,
    dead: AtomicU64,
    unroutable: AtomicU64,
    resent: AtomicU64,
    unacknowledged: AtomicU64,
    acknowledged: AtomicU64,
    fenced: AtomicU64,
    events_published: AtomicU64,
    recorded: AtomicU64,
    topics_created: AtomicU64,
    audits_published: AtomicU64,
    audit_deferred: AtomicU64,
    resend_failures: AtomicU64,
    /// Microseconds from handing a message to the producer until the broker's ack.
    produce_latency_us: Mutex<Option<Histogram<u64>>>,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        Self {
            sent: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            unroutable: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            unacknowledged: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            events_published: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
            topics_created: AtomicU64::new(0),
            audits_published: AtomicU64::new(0),
            audit_deferred: AtomicU64::new(0),
            resend_failures: AtomicU64::new(0),
            // 1 µs .. 10 min at 3 significant digits. The bounds are constants and valid; were
            // they not, latency would simply go unrecorded.
            produce_latency_us: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).ok()),
        }
    }
}

/// What the relay has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Orders sent (broker acknowledged) for the first time.
    pub sent: u64,
    /// Failed sends that will be tried again.
    pub retries: u64,
    /// Orders that spent their attempt budget.
    pub dead: u64,
    /// Orders no route matched.
    pub unroutable: u64,
    /// Re-sends after a missed handover deadline.
    pub resent: u64,
    /// Orders flagged because the partner never confirmed receipt.
    pub unacknowledged: u64,
    /// Orders whose receipt the partner confirmed (seen at their deadline).
    pub acknowledged: u64,
    /// Outcomes refused by the lease fence.
    pub fenced: u64,
    /// History events put on the order-events topic.
    pub events_published: u64,
    /// Outcomes (of any kind) committed by bookkeeping; fenced ones are not counted.
    pub recorded: u64,
    /// Re-sends after a handover deadline that failed (each is retried with backoff).
    pub resend_failures: u64,
    /// Audit copies that failed while their partner copy went out (kept in the audit outbox).
    pub audit_deferred: u64,
    /// Audit copies produced from the audit outbox.
    pub audits_published: u64,
    /// Topics the relay created because the broker did not know them.
    pub topics_created: u64,
    /// Produce latency percentiles.
    pub produce_latency_p50: Duration,
    /// 99th percentile.
    pub produce_latency_p99: Duration,
    /// Largest seen.
    pub produce_latency_max: Duration,
}

macro_rules! counter {
    ($name:ident, $field:ident) => {
        /// Adds to the counter of the same name.
        pub fn $name(&self, n: u64) {
            self.$field.fetch_add(n, Ordering::Relaxed);
        }
    };
}

impl RelayMetrics {
    counter!(add_sent, sent);
    counter!(add_retries, retries);
    counter!(add_dead, dead);
    counter!(add_unroutable, unroutable);
    counter!(add_resent, resent);
    counter!(add_unacknowledged, unacknowledged);
    counter!(add_acknowledged, acknowledged);
    counter!(add_fenced, fenced);
    counter!(add_events_published, events_published);
    counter!(add_recorded, recorded);
    counter!(add_resend_failures, resend_failures);
    counter!(add_audit_deferred, audit_deferred);
    counter!(add_audits_published, audits_published);
    counter!(add_topics_created, topics_created);

    /// Records one message's produce latency.
    pub fn record_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut histogram = self
            .produce_latency_us
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(histogram) = histogram.as_mut() {
            histogram.saturating_record(micros);
        }
    }

    /// The counters and percentiles now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let histogram = self
            .produce_latency_us
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (p50, p99, max) = match histogram.as_ref() {
            Some(h) if !h.is_empty() => {
                (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
            }
            _ => (0, 0, 0),
        };
        MetricsSnapshot {
            sent: self.sent.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
            unroutable: self.unroutable.load(Ordering::Relaxed),
            resent: self.resent.load(Ordering::Relaxed),
            unacknowledged: self.unacknowledged.load(Ordering::Relaxed),
            acknowledged: self.acknowledged.load(Ordering::Relaxed),
            fenced: self.fenced.load(Ordering::Relaxed),
            events_published: self.events_published.load(Ordering::Relaxed),
            recorded: self.recorded.load(Ordering::Relaxed),
            topics_created: self.topics_created.load(Ordering::Relaxed),
            audits_published: self.audits_published.load(Ordering::Relaxed),
            audit_deferred: self.audit_deferred.load(Ordering::Relaxed),
            resend_failures: self.resend_failures.load(Ordering::Relaxed),
            produce_latency_p50: Duration::from_micros(p50),
            produce_latency_p99: Duration::from_micros(p99),
            produce_latency_max: Duration::from_micros(max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentiles() {
        let metrics = RelayMetrics::default();
        metrics.add_sent(3);
        metrics.add_dead(1);
        for ms in 1..=100 {
            metrics.record_latency(Duration::from_millis(ms));
        }
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.sent, 3);
        assert_eq!(snapshot.dead, 1);
        let p50 = snapshot.produce_latency_p50.as_millis();
        assert!((49..=51).contains(&p50), "{p50}");
        assert!(snapshot.produce_latency_max >= Duration::from_millis(99));
    }
}
