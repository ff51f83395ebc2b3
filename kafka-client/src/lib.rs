//! What every Waybill Kafka client shares, the dispatcher's and the connector SDK's alike, and
//! nothing else: a leaf crate (librdkafka, `tracing`), so that a partner's connector does not
//! compile the services' dependencies to get it.
//!
//! - [`settings`]: refusing Kafka client settings the build cannot honour, before a service
//!   starts, naming what it supports.
//! - [`log`]: librdkafka's log lines and errors as one line per change (brokers down, back)
//!   instead of one per reconnect attempt, for every Kafka client's context.

pub mod log;
pub mod settings;
