//! Everything the dispatcher says to Kafka, and the one place that builds client settings.
//!
//! - [`producer`]: [`producer::OrderProducer`], an idempotent (`enable.idempotence=true`,
//!   `acks=all`) `FutureProducer` that sends a batch of messages concurrently and reports each
//!   message's outcome.
//! - [`messages`]: the records: partner copy, audit copy and order event, with their headers.
//! - [`TopicCreator`]: creates a partner's topic on enrolment. [`AdminTopicCreator`] uses the
//!   Kafka Admin API; brokers without one (librdkafka's mock cluster) get their own
//!   implementation ([`crate::embedded::MockTopicCreator`]).
//! - [`progress`]: asks how far a partner's consumer group has read its topic (members,
//!   committed offsets, watermarks), for the handover deadline. Its client has the group's id
//!   but never subscribes: the dispatcher reads no topic and commits nothing.

pub mod health_metrics;
pub mod messages;
pub mod producer;
pub mod progress;

use std::time::Duration;

use async_trait::async_trait;
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    types::RDKafkaErrorCode,
};

use waybill_service_kit::kafka_log::LogContext;

/// Broker connection settings.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Bootstrap servers.
    pub brokers: String,
    /// Extra librdkafka settings (security and tuning).
    pub options: Vec<(String, String)>,
    /// How long a message may take to be acknowledged (`message.timeout.ms`).
    pub produce_timeout: Duration,
    /// Partitions of created topics.
    pub topic_partitions: i32,
    /// Replication factor of created topics.
    pub topic_replication: i32,
}

impl KafkaSettings {
    /// Settings for `brokers` with local defaults.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            options: Vec::new(),
            produce_timeout: Duration::from_secs(15),
            topic_partitions: 6,
            topic_replication: 1,
        }
    }

    /// The producer's configuration. Idempotence and `acks=all` are set last so that no extra
    /// option can turn them off: at-least-once without duplicates from internal retries, and no
    /// ack before every in-sync replica has the message.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = self.base_config();
        config
            // Small batches leave at once; the relay already batches.
            .set("linger.ms", "0")
            .set("compression.type", "lz4")
            .set(
                "message.timeout.ms",
                self.produce_timeout.as_millis().to_string(),
            )
            // A topic the broker does not know fails its messages with "unknown topic" after
            // this long (instead of waiting out the whole produce timeout), so the relay creates
            // it and tries again (brokers with auto-creation off, or that lost their data).
            .set(
                "topic.metadata.propagation.max.ms",
                (self.produce_timeout / 2)
                    .min(Duration::from_secs(5))
                    .as_millis()
                    .to_string(),
            )
            .set("enable.idempotence", "true")
            .set("acks", "all");
        config
    }

    /// The admin client's configuration.
    pub fn admin_config(&self) -> ClientConfig {
        self.base_config()
    }

    /// The configuration of a client that asks about consumer group `group`
    /// ([`progress`]): set last, so no extra option can make it commit.
    pub fn group_probe_config(&self, group: &str) -> ClientConfig {
        let mut config = self.base_config();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        config
    }

    fn base_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config.set("client.id", "waybill-dispatcher");
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config
    }
}

/// Topic names the relay produces to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    /// Partner topics are `<prefix><partner id>`.
    pub partner_prefix: String,
    /// Copies of orders at or above the audit threshold.
    pub audit: String,
    /// Every order status change.
    pub order_events: String,
}

impl Default for TopicNames {
    fn default() -> Self {
        Self {
            partner_prefix: "waybill.partner.".to_owned(),
            audit: "waybill.audit".to_owned(),
            order_events: "waybill.order-events".to_owned(),
        }
    }
}

impl TopicNames {
    /// The topic partner `partner_id` consumes.
    pub fn partner_topic(&self, partner_id: &str) -> String {
        format!("{}{partner_id}", self.partner_prefix)
    }
}

/// Kafka's rule for topic names: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Why a topic could not be created.
#[derive(Debug, thiserror::Error)]
#[error("cannot create topic {topic}: {reason}")]
pub struct TopicError {
    /// The topic.
    pub topic: String,
    /// What the broker said.
    pub reason: String,
}

/// Creates topics; an existing topic is success.
#[async_trait]
pub trait TopicCreator: Send + Sync + std::fmt::Debug + 'static {
    /// Makes sure `topic` exists.
    async fn ensure_topic(&self, topic: &str) -> Result<(), TopicError>;
}

/// Creates topics with the Kafka Admin API (`CreateTopics`).
pub struct AdminTopicCreator {
    admin: AdminClient<LogContext>,
    partitions: i32,
    replication: i32,
}

impl std::fmt::Debug for AdminTopicCreator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminTopicCreator")
            .field("partitions", &self.partitions)
            .field("replication", &self.replication)
            .finish_non_exhaustive()
    }
}

impl AdminTopicCreator {
    /// An admin client for `settings`' brokers.
    pub fn new(settings: &KafkaSettings) -> Result<Self, rdkafka::error::KafkaError> {
        Ok(Self {
            admin: settings
                .admin_config()
                .create_with_context(LogContext::new("waybill-dispatcher admin"))?,
            partitions: settings.topic_partitions,
            replication: settings.topic_replication,
        })
    }
}

#[async_trait]
impl TopicCreator for AdminTopicCreator {
    async fn ensure_topic(&self, topic: &str) -> Result<(), TopicError> {
        let new_topic = NewTopic::new(
            topic,
            self.partitions,
            TopicReplication::Fixed(self.replication),
        );
        // The whole request is bounded too: by default it waits `socket.timeout.ms` (60 s) for
        // a broker that does not answer.
        let options = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(10)))
            .request_timeout(Some(Duration::from_secs(15)));
        let fail = |reason: String| TopicError {
            topic: topic.to_owned(),
            reason,
        };
        let results = self
            .admin
            .create_topics([&new_topic], &options)
            .await
            .map_err(|e| fail(e.to_string()))?;
        self.admin.inner().context().log().reachable();
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(fail(code.to_string())),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(is_valid_topic_name("waybill.partner.acme-1"));
        assert!(!is_valid_topic_name(""));
        assert!(!is_valid_topic_name(".."));
        assert!(!is_valid_topic_name("a b"));
        assert!(!is_valid_topic_name(&"x".repeat(250)));
    }

    #[test]
    fn extra_options_cannot_turn_off_idempotence() {
        let mut settings = KafkaSettings::new("127.0.0.1:9092");
        settings.options = vec![
            ("enable.idempotence".into(), "false".into()),
            ("acks".into(), "1".into()),
        ];
        let config = settings.producer_config();
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("acks"), Some("all"));
    }
}
