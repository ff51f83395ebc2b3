//! The relay's producer: one idempotent `FutureProducer` shared by every batch. A batch's
//! messages are all handed to librdkafka before any acknowledgement is awaited, so a batch
//! costs about one broker round trip, not one per message.
//!
//! An idempotent producer can hit a fatal error (the broker fenced its producer id, say);
//! then every later send fails. The producer notices it and builds a fresh client, so the relay
//! recovers on its next batch instead of burning every order's attempt budget.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use futures::future::join_all;
use rdkafka::{
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
    util::Timeout,
};
use tracing::{error, warn};

use super::{KafkaSettings, messages::OutgoingMessage};

/// The outcome of one message: the time until the broker's ack, or what went wrong.
pub type SendOutcome = Result<Duration, String>;

/// A shareable idempotent producer.
#[derive(Clone)]
pub struct OrderProducer {
    settings: KafkaSettings,
    producer: Arc<RwLock<FutureProducer>>,
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
        let producer: FutureProducer = settings.producer_config().create()?;
        Ok(Self {
            settings: settings.clone(),
            producer: Arc::new(RwLock::new(producer)),
        })
    }

    fn current(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Sends every message concurrently and returns their outcomes, in order.
    pub async fn send_all(&self, messages: &[OutgoingMessage]) -> Vec<SendOutcome> {
        let producer = self.current();
        let sends = messages.iter().map(|message| {
            let producer = &producer;
            async move {
                let started = Instant::now();
                let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
                for (key, value) in &message.headers {
                    headers = headers.insert(Header {
                        key,
                        value: Some(value.as_str()),
                    });
                }
                let record = FutureRecord::to(&message.topic)
                    .key(&message.key)
                    .payload(&message.payload)
                    .headers(headers);
                match producer
                    .send(record, Timeout::After(self.settings.produce_timeout))
                    .await
                {
                    Ok(_) => Ok(started.elapsed()),
                    Err((error, _)) => Err(error.to_string()),
                }
            }
        });
        let outcomes = join_all(sends).await;
        if outcomes.iter().any(Result::is_err) {
            self.replace_if_fatal(&producer);
        }
        outcomes
    }

    fn replace_if_fatal(&self, failed: &FutureProducer) {
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        error!(%code, %reason, "kafka producer hit a fatal error, building a new one");
        match self.settings.producer_config().create::<FutureProducer>() {
            Ok(fresh) => {
                *self
                    .producer
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
            }
            Err(error) => warn!(%error, "cannot build a new kafka producer, will try again"),
        }
    }

    /// Waits until every message handed over so far is acknowledged or failed, at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.current().flush(Timeout::After(timeout))
    }
}
