//! The relay's producer: one idempotent `FutureProducer` shared by every batch. A batch's
//! messages are all handed to librdkafka before any acknowledgement is awaited, so a batch
//! costs about one broker round trip, not one per message.
//!
//! An idempotent producer can break for good while librdkafka still calls it healthy: after a
//! produce request times out in flight, some brokers answer every later send of that producer
//! id with `ProducerFenced`, `InvalidProducerEpoch` or `UnknownProducerId`, and a broker that
//! lost its data no longer knows the producer at all. So the producer is rebuilt (a fresh
//! client, a fresh producer id) when
//! - librdkafka reports a fatal error,
//! - any send fails with one of those producer-state errors, or
//! - [`REBUILD_AFTER_FAILED_BATCHES`] batches in a row had not one successful send (whatever
//!   broke, a fresh client is cheap next to an outage that burns attempt budgets).
//!
//! [`SendHealth`] tells the rest of the service whether the producer can send: the relay's
//! health component and its metrics read it.

use std::{
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::join_all;
use rdkafka::{
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer},
    types::RDKafkaErrorCode,
    util::Timeout,
};
use tokio::sync::watch;
use tracing::{error, warn};

use waybill_service_kit::kafka_log::LogContext;

use super::{KafkaSettings, messages::OutgoingMessage};

/// The producer client: librdkafka's lines go through [`LogContext`] (once per change).
type Client = FutureProducer<LogContext>;

/// Batches in a row without one successful send after which the producer is rebuilt.
pub const REBUILD_AFTER_FAILED_BATCHES: u32 = 3;

/// What kind of failure a send met: it decides what the relay does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendErrorKind {
    /// The topic does not exist (or the broker lost it): create it, then try again.
    UnknownTopic,
    /// The producer's own state is broken (fenced, unknown producer id, bad epoch, fatal):
    /// only a new producer recovers.
    ProducerState,
    /// Anything else (timeouts, a broker down): retry later.
    Other,
}

/// Why one message was not produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    /// The kind, for deciding.
    pub kind: SendErrorKind,
    /// What librdkafka said, for people.
    pub message: String,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl SendError {
    /// Classifies a librdkafka error.
    pub fn from_kafka(error: &KafkaError) -> Self {
        let kind = match error.rdkafka_error_code() {
            Some(code) => classify(code),
            None => SendErrorKind::Other,
        };
        Self {
            kind,
            message: error.to_string(),
        }
    }
}

/// The decision behind [`SendErrorKind`], kept apart so it is unit-tested.
pub fn classify(code: RDKafkaErrorCode) -> SendErrorKind {
    match code {
        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
            SendErrorKind::UnknownTopic
        }
        RDKafkaErrorCode::ProducerFenced
        | RDKafkaErrorCode::InvalidProducerEpoch
        | RDKafkaErrorCode::UnknownProducerId
        | RDKafkaErrorCode::InvalidProducerIdMapping
        | RDKafkaErrorCode::OutOfOrderSequenceNumber
        | RDKafkaErrorCode::Fatal => SendErrorKind::ProducerState,
        _ => SendErrorKind::Other,
    }
}

/// A message the broker acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// From handing it to the producer until the broker's ack.
    pub latency: Duration,
    /// The partition the broker put it in (its delivery report).
    pub partition: i32,
    /// Its offset there (negative when the broker did not say).
    pub offset: i64,
}

/// The outcome of one message: where and how fast the broker took it, or what went wrong.
pub type SendOutcome = Result<Delivered, SendError>;

/// Whether the producer can send, as seen by its last batches.
#[derive(Debug)]
pub struct SendHealth {
    /// `true` while the latest batch had at least one acknowledged send (or none was tried).
    can_send: watch::Sender<bool>,
    failed_batches_in_a_row: AtomicU32,
    rebuilds: AtomicU64,
    failed_sends: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A copy of [`SendHealth`] for reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SendHealthSnapshot {
    /// Whether the latest batch got at least one message acknowledged.
    pub can_send: bool,
    /// Batches in a row in which no message was acknowledged.
    pub failed_batches_in_a_row: u32,
    /// Producers rebuilt since start.
    pub rebuilds: u64,
    /// Messages that failed since start.
    pub failed_sends: u64,
    /// The latest failure.
    pub last_error: Option<String>,
}

impl Default for SendHealth {
    fn default() -> Self {
        Self {
            can_send: watch::Sender::new(true),
            failed_batches_in_a_row: AtomicU32::new(0),
            rebuilds: AtomicU64::new(0),
            failed_sends: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }
}

impl SendHealth {
    /// Follows `can_send` as it changes.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.can_send.subscribe()
    }

    /// The state now.
    pub fn snapshot(&self) -> SendHealthSnapshot {
        SendHealthSnapshot {
            can_send: *self.can_send.borrow(),
            failed_batches_in_a_row: self.failed_batches_in_a_row.load(Ordering::Relaxed),
            rebuilds: self.rebuilds.load(Ordering::Relaxed),
            failed_sends: self.failed_sends.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        }
    }

    /// Records one batch's outcomes; returns how many batches in a row have failed whole.
    fn observe(&self, outcomes: &[SendOutcome]) -> u32 {
        let failed = outcomes.iter().filter(|o| o.is_err()).count();
        self.failed_sends
            .fetch_add(failed as u64, Ordering::Relaxed);
        if let Some(Err(error)) = outcomes.iter().rev().find(|o| o.is_err()) {
            *self
                .last_error
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(error.message.clone());
        }
        if failed < outcomes.len() {
            self.failed_batches_in_a_row.store(0, Ordering::Relaxed);
            self.can_send
                .send_if_modified(|can| !std::mem::replace(can, true));
            0
        } else {
            self.can_send
                .send_if_modified(|can| std::mem::replace(can, false));
            self.failed_batches_in_a_row.fetch_add(1, Ordering::Relaxed) + 1
        }
    }
}

/// A shareable idempotent producer that replaces itself when it breaks.
#[derive(Clone)]
pub struct OrderProducer {
    settings: KafkaSettings,
    producer: Arc<RwLock<Client>>,
    /// Shared by every producer this one is rebuilt into, so an outage is told once.
    context: LogContext,
    health: Arc<SendHealth>,
}

impl std::fmt::Debug for OrderProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderProducer")
            .field("brokers", &self.settings.brokers)
            .finish_non_exhaustive()
    }
}

impl OrderProducer {
    /// A producer for `settings` (connects lazily).
    pub fn new(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        let context = LogContext::new("waybill-dispatcher producer");
        let producer = settings
            .producer_config()
            .create_with_context(context.clone())?;
        Ok(Self {
            settings: settings.clone(),
            producer: Arc::new(RwLock::new(producer)),
            context,
            health: Arc::new(SendHealth::default()),
        })
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &KafkaSettings {
        &self.settings
    }

    /// Whether it can send, shared with the health reporter and the metrics.
    pub fn health(&self) -> &Arc<SendHealth> {
        &self.health
    }

    fn current(&self) -> Client {
        self.producer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Sends every message concurrently and returns their outcomes, in order.
    ///
    /// Every message is handed to librdkafka before any acknowledgement is awaited, and what
    /// is awaited per message is only its delivery report: an `async` send per message would
    /// keep a whole retry state machine per message in memory for as long as the batch waits
    /// (about a kilobyte each, thousands per batch). Only a message the full local queue
    /// refuses waits in such a send, for up to the produce timeout.
    pub async fn send_all(&self, messages: &[OutgoingMessage]) -> Vec<SendOutcome> {
        if messages.is_empty() {
            return Vec::new();
        }
        let producer = self.current();
        let queue_timeout = Timeout::After(self.settings.produce_timeout);
        let enqueued: Vec<_> = messages
            .iter()
            .map(|message| {
                let started = Instant::now();
                let queued = match producer.send_result(record_of(message)) {
                    Ok(delivery) => Enqueued::Queued(delivery),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        Enqueued::QueueFull(message)
                    }
                    Err((error, _)) => Enqueued::Refused(error),
                };
                (started, queued)
            })
            .collect();
        let sends = enqueued.into_iter().map(|(started, queued)| {
            let producer = &producer;
            async move {
                let delivered = match queued {
                    // Canceled: the producer went away before reporting (it is kept alive
                    // here, so only a librdkafka failure gets there).
                    Enqueued::Queued(delivery) => delivery.await.map_err(|_| KafkaError::Canceled),
                    // Rare (the broker has been away long enough to fill the local queue):
                    // boxed, so that its state does not size every other message's.
                    Enqueued::QueueFull(message) => {
                        Ok(Box::pin(producer.send(record_of(message), queue_timeout)).await)
                    }
                    Enqueued::Refused(error) => Err(error),
                };
                match delivered {
                    Ok(Ok(delivery)) => Ok(Delivered {
                        latency: started.elapsed(),
                        partition: delivery.partition,
                        offset: delivery.offset,
                    }),
                    Ok(Err((error, _))) | Err(error) => Err(SendError::from_kafka(&error)),
                }
            }
        });
        let outcomes = join_all(sends).await;
        let failed_in_a_row = self.health.observe(&outcomes);
        if failed_in_a_row == 0 {
            self.context.log().reachable();
        }
        if let Some(reason) = rebuild_reason(&producer, &outcomes, failed_in_a_row) {
            self.rebuild(&producer, &reason);
        }
        outcomes
    }

    /// Replaces `failed` with a fresh producer, unless another batch already did.
    fn rebuild(&self, failed: &Client, reason: &str) {
        let fresh = match self
            .settings
            .producer_config()
            .create_with_context(self.context.clone())
        {
            Ok(fresh) => fresh,
            Err(error) => {
                warn!(%error, "cannot build a new kafka producer, will try again");
                return;
            }
        };
        let mut current = self
            .producer
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Batches in flight share a producer: only the first to see it broken replaces it.
        if !std::ptr::eq(current.client().native_ptr(), failed.client().native_ptr()) {
            return;
        }
        error!(%reason, "kafka producer cannot send, replacing it with a new one");
        *current = fresh;
        self.health.rebuilds.fetch_add(1, Ordering::Relaxed);
        self.health
            .failed_batches_in_a_row
            .store(0, Ordering::Relaxed);
    }

    /// Asks the broker for `topic`'s metadata now, so that a topic just created is known to
    /// the producer before the next send (it remembers a missing topic until its next refresh).
    pub async fn refresh_topic(&self, topic: &str) {
        let producer = self.current();
        let topic = topic.to_owned();
        let timeout = self.settings.produce_timeout.min(Duration::from_secs(5));
        let fetched = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Timeout::After(timeout))
                .map(|m| {
                    m.topics()
                        .first()
                        .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty())
                })
        })
        .await;
        match fetched {
            Ok(Ok(true)) => self.context.log().reachable(),
            _ => warn!("the broker does not list a topic just created yet"),
        }
    }

    /// Waits until every message handed over so far is acknowledged or failed, at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.current().flush(Timeout::After(timeout))
    }
}

/// Where one message of a batch stands right after it was handed over.
enum Enqueued<'a> {
    /// In librdkafka's queue: its delivery report will come.
    Queued(DeliveryFuture),
    /// The local queue was full: it is sent again, waiting for room.
    QueueFull(&'a OutgoingMessage),
    /// librdkafka refused it outright.
    Refused(KafkaError),
}

/// `message` as a record for librdkafka (which copies what it keeps).
fn record_of(message: &OutgoingMessage) -> FutureRecord<'_, str, [u8]> {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
    for (key, value) in &message.headers {
        headers = headers.insert(Header {
            key: key.as_ref(),
            value: Some(value.as_str()),
        });
    }
    FutureRecord::to(&message.topic)
        .key(message.key.as_str())
        .payload(message.payload.as_slice())
        .headers(headers)
}

/// Why the producer that produced `outcomes` must be replaced, if it must.
fn rebuild_reason(
    producer: &Client,
    outcomes: &[SendOutcome],
    failed_batches_in_a_row: u32,
) -> Option<String> {
    if let Some((code, reason)) = producer.client().fatal_error() {
        return Some(format!("fatal error {code}: {reason}"));
    }
    if let Some(Err(error)) = outcomes
        .iter()
        .find(|o| matches!(o, Err(e) if e.kind == SendErrorKind::ProducerState))
    {
        return Some(format!("producer state error: {error}"));
    }
    (failed_batches_in_a_row >= REBUILD_AFTER_FAILED_BATCHES).then(|| {
        format!("{failed_batches_in_a_row} batches in a row without one acknowledged message")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered() -> SendOutcome {
        Ok(Delivered {
            latency: Duration::from_millis(1),
            partition: 0,
            offset: 0,
        })
    }

    fn failure(kind: SendErrorKind) -> SendOutcome {
        Err(SendError {
            kind,
            message: "boom".to_owned(),
        })
    }

    #[test]
    fn producer_state_errors_need_a_new_producer() {
        for code in [
            RDKafkaErrorCode::ProducerFenced,
            RDKafkaErrorCode::InvalidProducerEpoch,
            RDKafkaErrorCode::UnknownProducerId,
        ] {
            assert_eq!(classify(code), SendErrorKind::ProducerState, "{code:?}");
        }
        assert_eq!(
            classify(RDKafkaErrorCode::UnknownTopicOrPartition),
            SendErrorKind::UnknownTopic
        );
        assert_eq!(
            classify(RDKafkaErrorCode::UnknownTopic),
            SendErrorKind::UnknownTopic
        );
        assert_eq!(
            classify(RDKafkaErrorCode::MessageTimedOut),
            SendErrorKind::Other
        );
    }

    #[test]
    fn health_follows_whole_batches() {
        let health = SendHealth::default();
        assert!(health.snapshot().can_send);
        // One success among failures: the producer works (the failures are the topics').
        let mixed = [delivered(), failure(SendErrorKind::Other)];
        assert_eq!(health.observe(&mixed), 0);
        assert!(health.snapshot().can_send);
        let all_failed = [failure(SendErrorKind::Other), failure(SendErrorKind::Other)];
        assert_eq!(health.observe(&all_failed), 1);
        assert_eq!(health.observe(&all_failed), 2);
        let snapshot = health.snapshot();
        assert!(!snapshot.can_send);
        assert_eq!(snapshot.failed_batches_in_a_row, 2);
        assert_eq!(snapshot.failed_sends, 5);
        assert_eq!(snapshot.last_error.as_deref(), Some("boom"));
        assert_eq!(health.observe(&[delivered()]), 0);
        assert!(health.snapshot().can_send);
    }

    #[test]
    fn rebuilds_on_producer_state_errors_and_runs_of_failed_batches() {
        let producer: Client = KafkaSettings::new("127.0.0.1:1")
            .producer_config()
            .create_with_context(LogContext::new("test"))
            .expect("producer");
        let other = [failure(SendErrorKind::Other)];
        assert_eq!(rebuild_reason(&producer, &other, 1), None);
        assert_eq!(
            rebuild_reason(&producer, &other, REBUILD_AFTER_FAILED_BATCHES - 1),
            None
        );
        assert!(rebuild_reason(&producer, &other, REBUILD_AFTER_FAILED_BATCHES).is_some());
        let fenced = [delivered(), failure(SendErrorKind::ProducerState)];
        assert!(rebuild_reason(&producer, &fenced, 0).is_some());
        let unknown_topic = [failure(SendErrorKind::UnknownTopic)];
        assert_eq!(rebuild_reason(&producer, &unknown_topic, 1), None);
    }
}
