//! [`ConnectorError`]: why the connector could not start or stopped, and [`ConfigError`]: which
//! setting is wrong. Each says whether trying again may help ([`ConnectorError::is_retryable`]):
//! a refused setting never does; an inbox that could not be reached may.

use waybill_kafka_client::settings::UnsupportedKafkaSetting;

use crate::{inbox::InboxError, signing::SigningKeyError};

/// Why the connector could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A setting is wrong.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// A Kafka client could not be created.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The inbox could not be opened.
    #[error(transparent)]
    Inbox(#[from] InboxError),
}

impl ConnectorError {
    /// Whether starting again with the same settings may succeed: only when the inbox could
    /// not be reached for a moment. A wrong setting, or a Kafka client librdkafka refuses to
    /// create, is refused again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Config(_) | Self::Kafka(_) => false,
            Self::Inbox(error) => error.is_retryable(),
        }
    }
}

/// A setting the connector refuses, before it starts. Never retryable: fix the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable that takes milliseconds holds something else.
    #[error("{variable}={value:?} is not a number of milliseconds")]
    NotMilliseconds {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
    },
    /// An entry of `WAYBILL_KAFKA_OPTIONS` is not `key=value`.
    #[error("WAYBILL_KAFKA_OPTIONS: {entry:?} must be key=value")]
    KafkaOption {
        /// The entry.
        entry: String,
    },
    /// Neither `WAYBILL_PARTNER_KEY_FILE` nor `WAYBILL_PARTNER_KEY_ID` is set.
    #[error(
        "WAYBILL_PARTNER_KEY_FILE and WAYBILL_PARTNER_KEY_ID are required: the private key that signs reports and the id it was enrolled under (`waybill keys generate` makes both)"
    )]
    NoKeyVariables,
    /// Only one of `WAYBILL_PARTNER_KEY_FILE` and `WAYBILL_PARTNER_KEY_ID` is set.
    #[error("set both WAYBILL_PARTNER_KEY_FILE and WAYBILL_PARTNER_KEY_ID")]
    HalfKeyVariables,
    /// The signing key could not be read.
    #[error(transparent)]
    SigningKey(#[from] SigningKeyError),
    /// A file a variable names could not be read.
    #[error("{variable}: cannot read {path}: {reason}")]
    File {
        /// The variable.
        variable: &'static str,
        /// The file.
        path: String,
        /// What the file system said.
        reason: String,
    },
    /// The partner id has characters a topic or group name cannot hold.
    #[error("partner id {0:?} must be ASCII letters, digits, '-', '_' or '.'")]
    PartnerId(String),
    /// No cluster is configured.
    #[error("no cluster configured: add one with .cluster(ClusterConfig::new(name, brokers))")]
    NoCluster,
    /// Two clusters have the same name.
    #[error("cluster names must be unique")]
    DuplicateCluster,
    /// A cluster's Kafka settings are ones this build's librdkafka cannot honour.
    #[error("cluster {cluster}: {refused}")]
    KafkaSettings {
        /// The cluster's name.
        cluster: String,
        /// What librdkafka refused, and what the build supports.
        #[source]
        refused: UnsupportedKafkaSetting,
    },
    /// No signing key was given.
    #[error("no signing key: reports must be signed with the key enrolled for this partner")]
    NoSigningKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unreachable_inbox_is_worth_starting_again_for() {
        let config = ConnectorError::from(ConfigError::NoCluster);
        assert!(!config.is_retryable());
        assert_eq!(
            config.to_string(),
            "configuration: no cluster configured: add one with .cluster(ClusterConfig::new(name, brokers))"
        );
        let down = ConnectorError::from(InboxError::Unavailable("connection refused".into()));
        assert!(down.is_retryable());
        let corrupt = ConnectorError::from(InboxError::Corrupt("unknown order state".into()));
        assert!(!corrupt.is_retryable());
    }
}
