//! The relay's in-process metrics: counters since start and a produce-latency histogram. The
//! backlog (rows by state, age of the oldest due row) is read from the database when asked,
//! since only the database knows it across instances.
//!
//! One source, three views: Prometheus series (`waybill_dispatcher_*`, see [`RelayMetrics::register`]
//! and the dispatcher's `/metrics`), the `GetRelayStats` admin RPC (grpcurl-able, with exact
//! percentiles from an HDR histogram) and a structured log line every `--stats-interval`.

use std::{sync::Mutex, time::Duration};

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram as PromHistogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use waybill_proto::v1::DispatchState;

use crate::domain::model::Backlog;

/// Every state a dispatch row waits in (the backlog gauge has a series for each); not
/// `ACKNOWLEDGED`, which is done.
const STATES: [DispatchState; 6] = [
    DispatchState::Pending,
    DispatchState::Retrying,
    DispatchState::Sent,
    DispatchState::Dead,
    DispatchState::Unroutable,
    DispatchState::Unacknowledged,
];

/// The label of the backlog gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The dispatch state's short name (`PENDING`, `SENT`, …).
    pub state: &'static str,
}

/// Counters and the latency histogram of one relay.
#[derive(Debug)]
pub struct RelayMetrics {
    sent: Counter,
    retries: Counter,
    dead: Counter,
    unroutable: Counter,
    resent: Counter,
    unacknowledged: Counter,
    acknowledged: Counter,
    fenced: Counter,
    events_published: Counter,
    recorded: Counter,
    topics_created: Counter,
    audits_published: Counter,
    audit_deferred: Counter,
    resend_failures: Counter,
    handover_extended: Counter,
    handover_probe_failures: Counter,
    retention_attempts: Counter,
    retention_messages: Counter,
    /// Microseconds from handing a message to the producer until the broker's ack.
    produce_latency_us: Mutex<Option<Histogram<u64>>>,
    /// The same, as Prometheus buckets (seconds).
    produce_latency: PromHistogram,
    /// Dispatch rows by state, as last read from the database.
    backlog: Family<StateLabel, Gauge>,
    /// Seconds since the oldest due row became due, as last read.
    oldest_due_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Audit copies waiting in the audit outbox, as last read.
    audit_pending: Gauge,
    /// Seconds since the next history event to publish was recorded, as last read.
    unpublished_event_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Per partner, seconds since the oldest order it has not confirmed was last sent.
    oldest_unconfirmed_age: Family<PartnerLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

/// The label of the per-partner gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartnerLabel {
    /// The partner id.
    pub partner: String,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        Self {
            sent: Counter::default(),
            retries: Counter::default(),
            dead: Counter::default(),
            unroutable: Counter::default(),
            resent: Counter::default(),
            unacknowledged: Counter::default(),
            acknowledged: Counter::default(),
            fenced: Counter::default(),
            events_published: Counter::default(),
            recorded: Counter::default(),
            topics_created: Counter::default(),
            audits_published: Counter::default(),
            audit_deferred: Counter::default(),
            resend_failures: Counter::default(),
            handover_extended: Counter::default(),
            handover_probe_failures: Counter::default(),
            retention_attempts: Counter::default(),
            retention_messages: Counter::default(),
            // 1 µs .. 10 min at 3 significant digits. The bounds are constants and valid; were
            // they not, latency would simply go unrecorded.
            produce_latency_us: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).ok()),
            // 0.5 ms .. ~16 s, doubling.
            produce_latency: PromHistogram::new(exponential_buckets(0.0005, 2.0, 16)),
            backlog: Family::default(),
            oldest_due_age: Gauge::default(),
            audit_pending: Gauge::default(),
            unpublished_event_age: Gauge::default(),
            oldest_unconfirmed_age: Family::default(),
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
    /// Handover deadlines moved on without a re-send because the partner was behind.
    pub handover_extended: u64,
    /// Times the broker could not tell how far a partner's consumer group had read (its
    /// overdue orders then followed the re-send rule).
    pub handover_probe_failures: u64,
    /// Audit copies that failed while their partner copy went out (kept in the audit outbox).
    pub audit_deferred: u64,
    /// Audit copies produced from the audit outbox.
    pub audits_published: u64,
    /// Topics the relay created because the broker did not know them.
    pub topics_created: u64,
    /// Attempt-log entries the retention job deleted.
    pub retention_attempts: u64,
    /// Stored messages of acknowledged orders the retention job cleared.
    pub retention_messages: u64,
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
            self.$field.inc_by(n);
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
    counter!(add_handover_extended, handover_extended);
    counter!(add_handover_probe_failures, handover_probe_failures);
    counter!(add_audit_deferred, audit_deferred);
    counter!(add_audits_published, audits_published);
    counter!(add_topics_created, topics_created);
    counter!(add_retention_attempts, retention_attempts);
    counter!(add_retention_messages, retention_messages);

    /// Registers the Prometheus series (names without the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        let counters: [(&str, &str, &Counter); 18] = [
            (
                "retention_attempts_deleted",
                "Attempt-log entries the retention job deleted",
                &self.retention_attempts,
            ),
            (
                "retention_messages_cleared",
                "Stored messages of acknowledged orders the retention job cleared",
                &self.retention_messages,
            ),
            (
                "sent",
                "Orders sent (broker acknowledged) for the first time",
                &self.sent,
            ),
            (
                "retries",
                "Failed sends that will be tried again",
                &self.retries,
            ),
            (
                "dead",
                "Orders that spent their attempt budget (DEAD)",
                &self.dead,
            ),
            (
                "unroutable",
                "Orders no route matched (UNROUTABLE)",
                &self.unroutable,
            ),
            (
                "resent",
                "Re-sends after a missed handover deadline",
                &self.resent,
            ),
            (
                "resend_failures",
                "Re-sends after a handover deadline that failed",
                &self.resend_failures,
            ),
            (
                "handover_extended",
                "Handover deadlines moved on without a re-send: the partner's consumers were \
                 alive and had not read the order yet",
                &self.handover_extended,
            ),
            (
                "handover_probe_failures",
                "Overdue batches for which the broker could not tell how far a partner's \
                 consumer group had read (its orders followed the re-send rule)",
                &self.handover_probe_failures,
            ),
            (
                "unacknowledged",
                "Orders flagged because the partner never confirmed receipt",
                &self.unacknowledged,
            ),
            (
                "acknowledged",
                "Orders whose receipt the partner confirmed, seen at their deadline",
                &self.acknowledged,
            ),
            (
                "fenced",
                "Outcomes refused by the lease fence (another instance owns the row)",
                &self.fenced,
            ),
            (
                "events_published",
                "History events put on the order-events topic",
                &self.events_published,
            ),
            (
                "recorded",
                "Outcomes committed by bookkeeping",
                &self.recorded,
            ),
            (
                "topics_created",
                "Topics the relay created because the broker did not know them",
                &self.topics_created,
            ),
            (
                "audits_published",
                "Audit copies produced from the audit outbox",
                &self.audits_published,
            ),
            (
                "audit_deferred",
                "Audit copies that failed while their partner copy went out",
                &self.audit_deferred,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register_with_unit(
            "produce_latency",
            "From handing a message to the producer until the broker acknowledged it",
            Unit::Seconds,
            self.produce_latency.clone(),
        );
        registry.register(
            "outbox_backlog",
            "Dispatch rows by state, read from the database at scrape time (all instances)",
            self.backlog.clone(),
        );
        registry.register_with_unit(
            "oldest_due_age",
            "Age of the oldest dispatch row that is due now (0 when none is due)",
            Unit::Seconds,
            self.oldest_due_age.clone(),
        );
        registry.register(
            "audit_outbox_pending",
            "Audit copies waiting in the audit outbox",
            self.audit_pending.clone(),
        );
        registry.register_with_unit(
            "unpublished_event_age",
            "Age of the next history event waiting for the order-events topic (0 when none is)",
            Unit::Seconds,
            self.unpublished_event_age.clone(),
        );
        registry.register_with_unit(
            "oldest_unconfirmed_age",
            "Per partner: how long ago the oldest order it has not confirmed was sent (no series: none waiting)",
            Unit::Seconds,
            self.oldest_unconfirmed_age.clone(),
        );
    }

    /// Sets the backlog gauges from a fresh read of the database. Every state is set (0 when it
    /// has no rows), so a drained state reads 0 rather than its last value.
    pub fn set_backlog(&self, backlog: &Backlog, now: DateTime<Utc>) {
        for state in STATES {
            let rows = backlog
                .by_state
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n);
            self.backlog
                .get_or_create(&StateLabel {
                    state: state.short_name(),
                })
                .set(rows);
        }
        let age = |at: Option<DateTime<Utc>>| {
            at.map_or(0.0, |at| {
                ((now - at).num_milliseconds().max(0) as f64) / 1000.0
            })
        };
        self.oldest_due_age.set(age(backlog.oldest_due_at));
        self.audit_pending.set(backlog.audit_pending);
        self.unpublished_event_age
            .set(age(backlog.oldest_unpublished_at));
        // Only the partners waiting now: one that caught up has no series rather than its last.
        self.oldest_unconfirmed_age.clear();
        for (partner, at) in &backlog.oldest_unconfirmed_by_partner {
            self.oldest_unconfirmed_age
                .get_or_create(&PartnerLabel {
                    partner: partner.clone(),
                })
                .set(age(Some(*at)));
        }
    }

    /// Records one message's produce latency.
    pub fn record_latency(&self, latency: Duration) {
        self.produce_latency.observe(latency.as_secs_f64());
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
            sent: self.sent.get(),
            retries: self.retries.get(),
            dead: self.dead.get(),
            unroutable: self.unroutable.get(),
            resent: self.resent.get(),
            unacknowledged: self.unacknowledged.get(),
            acknowledged: self.acknowledged.get(),
            fenced: self.fenced.get(),
            events_published: self.events_published.get(),
            recorded: self.recorded.get(),
            topics_created: self.topics_created.get(),
            retention_attempts: self.retention_attempts.get(),
            retention_messages: self.retention_messages.get(),
            audits_published: self.audits_published.get(),
            audit_deferred: self.audit_deferred.get(),
            resend_failures: self.resend_failures.get(),
            handover_extended: self.handover_extended.get(),
            handover_probe_failures: self.handover_probe_failures.get(),
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

    #[test]
    fn backlog_gauges_cover_every_state_and_the_oldest_due_age() {
        let metrics = RelayMetrics::default();
        let mut registry = Registry::with_prefix("waybill_dispatcher");
        metrics.register(&mut registry);
        let now = Utc::now();
        metrics.set_backlog(
            &Backlog {
                by_state: vec![(DispatchState::Pending, 4), (DispatchState::Dead, 1)],
                oldest_due_at: Some(now - chrono::Duration::milliseconds(2500)),
                audit_pending: 2,
                oldest_unpublished_at: Some(now - chrono::Duration::milliseconds(1500)),
                oldest_unconfirmed_by_partner: vec![(
                    "acme".to_owned(),
                    now - chrono::Duration::seconds(90),
                )],
            },
            now,
        );
        metrics.add_retries(2);
        metrics.record_latency(Duration::from_millis(3));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for line in [
            "waybill_dispatcher_outbox_backlog{state=\"PENDING\"} 4",
            "waybill_dispatcher_outbox_backlog{state=\"DEAD\"} 1",
            "waybill_dispatcher_outbox_backlog{state=\"SENT\"} 0",
            "waybill_dispatcher_oldest_due_age_seconds 2.5",
            "waybill_dispatcher_audit_outbox_pending 2",
            "waybill_dispatcher_unpublished_event_age_seconds 1.5",
            "waybill_dispatcher_oldest_unconfirmed_age_seconds{partner=\"acme\"} 90.0",
            "waybill_dispatcher_retries_total 2",
            "waybill_dispatcher_produce_latency_seconds_count 1",
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line} in:\n{text}");
        }
        // A drained state reads 0, not its last value.
        metrics.set_backlog(&Backlog::default(), now);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(text.contains("waybill_dispatcher_outbox_backlog{state=\"PENDING\"} 0\n"));
        assert!(
            text.contains("waybill_dispatcher_oldest_due_age_seconds 0.0\n"),
            "{text}"
        );
        assert!(
            !text.contains("oldest_unconfirmed_age_seconds{"),
            "a partner that caught up has no series: {text}"
        );
    }
}
