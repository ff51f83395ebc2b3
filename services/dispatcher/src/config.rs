//! Settings of `waybill dispatcher`: flags with environment fallbacks ([`DispatcherArgs`]),
//! validated into a [`DispatcherConfig`] before anything starts.

use std::{net::SocketAddr, time::Duration};

use uuid::Uuid;
pub use waybill_service_kit::config::ConfigError;
use waybill_service_kit::{
    config::{check_name, check_pool_size, check_range},
    duration::{format_duration, parse_duration},
    text::quote,
};

use crate::{
    domain::{
        audit::{AuditThresholds, DEFAULT_THRESHOLD},
        backoff::{BackoffPolicy, Jitter},
    },
    kafka::{KafkaSettings, TopicNames},
};

/// Flags of `waybill dispatcher` (each with an environment fallback).
#[derive(Debug, Clone, clap::Args)]
pub struct DispatcherArgs {
    /// Address the DispatchAdmin gRPC server (with health and reflection) listens on.
    #[arg(long, env = "WAYBILL_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    /// Where this service stores: `postgres://USER@HOST:5432/DB` in production (TLS with
    /// `?sslmode=verify-full&sslrootcert=CA.pem`, a client certificate with `&sslcert=…&sslkey=…`),
    /// `sqlite://PATH` on one machine. Required: nothing is stored anywhere unnamed.
    #[arg(long, env = "WAYBILL_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Most database connections this service opens.
    #[arg(long, env = "WAYBILL_DB_MAX_CONNECTIONS", default_value_t = 8)]
    pub db_max_connections: u32,
    /// Whether this service applies pending migrations at start.
    #[command(flatten)]
    pub schema: waybill_service_kit::db::SchemaArgs,
    /// Kafka bootstrap servers, comma-separated `host:port`.
    #[arg(long, env = "WAYBILL_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Extra librdkafka producer settings, `key=value` (repeatable or comma-separated), e.g.
    /// `security.protocol=SASL_SSL`, `sasl.mechanism=SCRAM-SHA-512`, `sasl.username=…`,
    /// `sasl.password=…`, `ssl.ca.location=ca.pem`. A setting this build cannot honour stops
    /// start-up (exit 64).
    /// Idempotence and `acks=all` cannot be turned off.
    #[arg(
        long = "kafka-option",
        env = "WAYBILL_KAFKA_OPTIONS",
        value_delimiter = ','
    )]
    pub kafka_options: Vec<String>,
    /// Prefix of partner topics: partner `acme` consumes `<prefix>acme`.
    #[arg(long, env = "WAYBILL_TOPIC_PREFIX", default_value = "waybill.partner.")]
    pub topic_prefix: String,
    /// Topic that receives a copy of every order at or above its currency's audit threshold.
    #[arg(long, env = "WAYBILL_AUDIT_TOPIC", default_value = "waybill.audit")]
    pub audit_topic: String,
    /// Topic that receives every order status change (for e-mail and other subscribers).
    #[arg(
        long,
        env = "WAYBILL_ORDER_EVENTS_TOPIC",
        default_value = "waybill.order-events"
    )]
    pub order_events_topic: String,
    /// Partitions of topics this service creates (partner topics on enrolment).
    #[arg(long, env = "WAYBILL_TOPIC_PARTITIONS", default_value_t = 6)]
    pub topic_partitions: i32,
    /// Replication factor of topics this service creates.
    #[arg(long, env = "WAYBILL_TOPIC_REPLICATION", default_value_t = 1)]
    pub topic_replication: i32,
    /// Name of this Waybill region, sent in a header with every order.
    #[arg(long, env = "WAYBILL_REGION", default_value = "local")]
    pub region: String,
    /// The StatusIngest address partners report to, sent with every order.
    #[arg(
        long,
        env = "WAYBILL_REPLY_TO",
        default_value = "http://127.0.0.1:50053"
    )]
    pub reply_to: String,
    /// Most orders leased, produced and recorded together.
    #[arg(long, env = "WAYBILL_BATCH_SIZE", default_value_t = 1000)]
    pub batch_size: u32,
    /// Batches worked on at once under a backlog, each under its own lease (new rows wake one
    /// loop; the others join when a batch comes back full, so batches overlap then).
    #[arg(long, env = "WAYBILL_BATCHES_IN_FLIGHT", default_value_t = 4)]
    pub batches_in_flight: u32,
    /// Most history events put on the order-events topic together. Every order sent makes
    /// two (PLACED, SENT_TO_PARTNER) and one publisher serves all dispatching loops, so its
    /// batches are larger than theirs: fewer round trips to the broker and the database.
    #[arg(long, env = "WAYBILL_EVENT_BATCH_SIZE", default_value_t = 3000)]
    pub event_batch_size: u32,
    /// Shortest time between two cycles publishing history events and audit copies that did not
    /// fill their batch: an event reaches its topic at most this much after its commit.
    #[arg(long, env = "WAYBILL_PUBLISH_INTERVAL", default_value = "100ms", value_parser = parse_duration)]
    pub publish_interval: Duration,
    /// How long a lease lasts; another instance takes over the orders of a crashed one after
    /// it. Must exceed --produce-timeout by more than a second (a send plus its bookkeeping
    /// must fit in the lease).
    #[arg(long, env = "WAYBILL_LEASE", default_value = "60s", value_parser = parse_duration)]
    pub lease: Duration,
    /// Fallback poll interval; new orders normally wake the relay at once (NOTIFY or in-process).
    #[arg(long, env = "WAYBILL_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// How long the broker gets to acknowledge a message before the send counts as failed.
    #[arg(long, env = "WAYBILL_PRODUCE_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub produce_timeout: Duration,
    /// Failed sends before an order is DEAD; also the failed re-sends (after a missed handover
    /// deadline) before an order is flagged UNACKNOWLEDGED.
    #[arg(long, env = "WAYBILL_ATTEMPT_BUDGET", default_value_t = 12)]
    pub attempt_budget: u32,
    /// Upper bound of the first retry delay (doubles per failure, full jitter).
    #[arg(long, env = "WAYBILL_BACKOFF_BASE", default_value = "5s", value_parser = parse_duration)]
    pub backoff_base: Duration,
    /// Largest retry delay.
    #[arg(long, env = "WAYBILL_BACKOFF_CAP", default_value = "10m", value_parser = parse_duration)]
    pub backoff_cap: Duration,
    /// Audit threshold per currency in minor units, `CUR=AMOUNT` (repeatable or
    /// comma-separated); the default is 10,000.00 USD.
    #[arg(long = "audit-threshold", env = "WAYBILL_AUDIT_THRESHOLDS", value_delimiter = ',', default_value = DEFAULT_THRESHOLD)]
    pub audit_thresholds: Vec<String>,
    /// How often the relay logs its metrics (backlog, latency, retries, dead).
    #[arg(long, env = "WAYBILL_STATS_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub stats_interval: Duration,
    /// How long attempt-log entries, and the stored message of an order its partner
    /// acknowledged, are kept; the retention job removes older ones (orders and their history
    /// are kept: they are what customers see).
    #[arg(long, env = "WAYBILL_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub retention: Duration,
    /// How often the retention job runs.
    #[arg(long, env = "WAYBILL_CLEANUP_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub cleanup_interval: Duration,
    /// This instance's lease-owner name (default: a fresh random id per start).
    #[arg(long, env = "WAYBILL_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// TLS, operators' credentials and the production guard of the admin listener.
    #[command(flatten)]
    pub security: waybill_service_kit::security::SecurityArgs,
    /// The Prometheus metrics listener (off by default).
    #[command(flatten)]
    pub metrics: waybill_service_kit::metrics::MetricsArgs,
}

/// Validated settings of one dispatcher.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Admin gRPC listen address.
    pub listen: SocketAddr,
    /// Database URL.
    pub database_url: String,
    /// Database pool size.
    pub db_max_connections: u32,
    /// What start-up does with the schema (migrate, or require it current).
    pub schema: waybill_service_kit::db::SchemaPolicy,
    /// Broker connection and topic creation.
    pub kafka: KafkaSettings,
    /// The relay.
    pub relay: RelaySettings,
    /// Admin listener security (loaded, with its files, when the service starts).
    pub security: waybill_service_kit::security::SecurityArgs,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics: waybill_service_kit::metrics::MetricsArgs,
}

/// How the relay works.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Lease owner name; unique per running instance.
    pub instance_id: String,
    /// Topic names.
    pub topics: TopicNames,
    /// Region header.
    pub region: String,
    /// Reply-to header.
    pub reply_to: String,
    /// Batch size.
    pub batch_size: u32,
    /// Batches one instance works on at once: while one batch's outcome is being recorded,
    /// the next is leased and produced.
    pub batches_in_flight: u32,
    /// Most history events published together.
    pub event_batch_size: u32,
    /// Shortest time between two publishing cycles that did not fill their batch.
    pub publish_interval: Duration,
    /// Lease length.
    pub lease: Duration,
    /// Fallback poll interval.
    pub poll_interval: Duration,
    /// Failed sends before DEAD.
    pub attempt_budget: u32,
    /// Retry schedule.
    pub backoff: BackoffPolicy,
    /// Audit rule.
    pub audit: AuditThresholds,
    /// Metrics log interval.
    pub stats_interval: Duration,
    /// What the retention job keeps.
    pub retention: Duration,
    /// How often it runs.
    pub cleanup_interval: Duration,
    /// Told of each order's steps through the relay (latency figures); none by default.
    pub observer: crate::relay::observe::Observer,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            instance_id: default_instance_id(),
            topics: TopicNames::default(),
            region: "local".to_owned(),
            reply_to: "http://127.0.0.1:50053".to_owned(),
            batch_size: 1000,
            batches_in_flight: 4,
            event_batch_size: 3000,
            publish_interval: Duration::from_millis(100),
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            attempt_budget: 12,
            backoff: BackoffPolicy::default(),
            audit: AuditThresholds::parse(&[DEFAULT_THRESHOLD]).unwrap_or_default(),
            stats_interval: Duration::from_secs(60),
            retention: Duration::from_secs(30 * 86_400),
            cleanup_interval: Duration::from_secs(600),
            observer: crate::relay::observe::Observer::default(),
        }
    }
}

/// A fresh lease-owner name.
pub fn default_instance_id() -> String {
    format!("dispatcher-{}", Uuid::new_v4().simple())
}

impl DispatcherArgs {
    /// Validates the flags.
    pub fn into_config(self) -> Result<DispatcherConfig, ConfigError> {
        let kafka_options = self
            .kafka_options
            .iter()
            .filter(|entry| !entry.trim().is_empty())
            .map(|entry| {
                entry
                    .split_once('=')
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .ok_or_else(|| {
                        ConfigError::new(
                            "--kafka-option",
                            format!("must be key=value, got {}", quote(entry)),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let audit = AuditThresholds::parse(&self.audit_thresholds)
            .map_err(|rule| ConfigError::new("--audit-threshold", rule))?;
        let config = DispatcherConfig {
            listen: self.listen,
            database_url: waybill_service_kit::config::require_database_url(self.database_url)?,
            db_max_connections: self.db_max_connections,
            schema: self.schema.policy(),
            kafka: KafkaSettings {
                brokers: self.kafka_brokers,
                options: kafka_options,
                produce_timeout: self.produce_timeout,
                topic_partitions: self.topic_partitions,
                topic_replication: self.topic_replication,
            },
            relay: RelaySettings {
                instance_id: self.instance_id.unwrap_or_else(default_instance_id),
                topics: TopicNames {
                    partner_prefix: self.topic_prefix,
                    audit: self.audit_topic,
                    order_events: self.order_events_topic,
                },
                region: self.region,
                reply_to: self.reply_to,
                batch_size: self.batch_size,
                batches_in_flight: self.batches_in_flight,
                event_batch_size: self.event_batch_size,
                publish_interval: self.publish_interval,
                lease: self.lease,
                poll_interval: self.poll_interval,
                attempt_budget: self.attempt_budget,
                backoff: BackoffPolicy {
                    base: self.backoff_base,
                    cap: self.backoff_cap,
                    jitter: Jitter::Full,
                },
                audit,
                stats_interval: self.stats_interval,
                retention: self.retention,
                cleanup_interval: self.cleanup_interval,
                observer: crate::relay::observe::Observer::default(),
            },
            security: self.security,
            metrics: self.metrics,
        };
        config.validate()?;
        Ok(config)
    }
}

impl DispatcherConfig {
    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let relay = &self.relay;
        let fail = |flag, rule: String| Err(ConfigError::new(flag, rule));
        check_pool_size(self.db_max_connections)?;
        check_range("--batch-size", relay.batch_size, 1..=10_000)?;
        check_range("--batches-in-flight", relay.batches_in_flight, 1..=16)?;
        let least = relay.batches_in_flight + 2;
        if waybill_service_kit::db::is_postgres_url(&self.database_url)
            && self.db_max_connections < least
        {
            return fail(
                "--db-max-connections",
                format!(
                    "must be at least --batches-in-flight plus two ({least}) on Postgres: each \
                     batch in flight holds a connection while it is produced, publishing holds \
                     one while it sends, and DispatchAdmin needs one; got {}",
                    self.db_max_connections
                ),
            );
        }
        check_range("--event-batch-size", relay.event_batch_size, 1..=50_000)?;
        if relay.lease <= self.kafka.produce_timeout + Duration::from_secs(1) {
            return fail(
                "--lease",
                format!(
                    "must exceed --produce-timeout ({}) by more than a second, or a slow send \
                     would outlive its lease; got {}",
                    format_duration(self.kafka.produce_timeout),
                    format_duration(relay.lease)
                ),
            );
        }
        let publish = relay.publish_interval;
        if publish > Duration::from_secs(10) {
            let rule = format!("must be at most 10s, got {}", format_duration(publish));
            return fail("--publish-interval", rule);
        }
        if relay.poll_interval.is_zero() {
            return fail("--poll-interval", "must be positive".to_owned());
        }
        if relay.retention < Duration::from_secs(3_600) {
            return fail(
                "--retention",
                format!(
                    "must be at least 1h (operators need the attempt log of recent trouble), \
                     got {}",
                    format_duration(relay.retention)
                ),
            );
        }
        if relay.cleanup_interval.is_zero() {
            return fail("--cleanup-interval", "must be positive".to_owned());
        }
        if relay.attempt_budget == 0 {
            return fail("--attempt-budget", "must be at least 1".to_owned());
        }
        if relay.backoff.base.is_zero() || relay.backoff.cap < relay.backoff.base {
            return fail(
                "--backoff-base",
                format!(
                    "must be positive and at most --backoff-cap ({}), got {}",
                    format_duration(relay.backoff.cap),
                    format_duration(relay.backoff.base)
                ),
            );
        }
        if relay.instance_id.trim().is_empty() {
            return fail("--instance-id", "must not be empty".to_owned());
        }
        check_name("--region", &relay.region)?;
        if !(relay.reply_to.starts_with("http://") || relay.reply_to.starts_with("https://")) {
            return fail(
                "--reply-to",
                format!(
                    "must be the StatusIngest URL, e.g. http://ingest.example:50053, got {}",
                    quote(&relay.reply_to)
                ),
            );
        }
        if self.kafka.brokers.trim().is_empty() {
            return fail(
                "--kafka-brokers",
                "must name at least one broker".to_owned(),
            );
        }
        if self.kafka.produce_timeout < Duration::from_millis(100) {
            return fail("--produce-timeout", "must be at least 100ms".to_owned());
        }
        if self.kafka.topic_partitions < 1 {
            return fail("--topic-partitions", "must be at least 1".to_owned());
        }
        if self.kafka.topic_replication < 1 {
            return fail("--topic-replication", "must be at least 1".to_owned());
        }
        for (flag, topic) in [
            ("--audit-topic", &relay.topics.audit),
            ("--order-events-topic", &relay.topics.order_events),
        ] {
            if !crate::kafka::is_valid_topic_name(topic) {
                return fail(
                    flag,
                    format!("{} is not a valid Kafka topic name", quote(topic)),
                );
            }
        }
        if !crate::kafka::is_valid_topic_name(&format!("{}x", relay.topics.partner_prefix)) {
            return fail(
                "--topic-prefix",
                format!(
                    "may hold only letters, digits, '.', '_' and '-', got {}",
                    quote(&relay.topics.partner_prefix)
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DispatcherArgs,
    }

    /// Parses `args` as the command line, with a database URL (required, and not what these
    /// tests are about).
    fn parse<const N: usize>(args: [&str; N]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(
            args.into_iter()
                .chain(["--database-url", "sqlite://unused.db"]),
        )
    }

    #[test]
    fn defaults_are_valid() {
        let config = parse(["x"])
            .expect("parse")
            .args
            .into_config()
            .expect("valid");
        assert_eq!(config.listen.port(), 50052);
        assert_eq!(config.relay.reply_to, "http://127.0.0.1:50053");
        assert!(config.relay.audit.is_audited("USD", 1_000_000));
    }

    #[test]
    fn refuses_a_postgres_pool_that_batches_in_flight_would_exhaust() {
        let config = |database_url: &str, pool: &str, batches: &str| {
            Cli::try_parse_from([
                "x",
                "--database-url",
                database_url,
                "--db-max-connections",
                pool,
                "--batches-in-flight",
                batches,
            ])
            .expect("parse")
            .args
            .into_config()
        };
        let error = config("postgres://db/waybill", "5", "4").expect_err("invalid");
        assert_eq!(error.flag, "--db-max-connections");
        assert_eq!(
            error.to_string(),
            "invalid setting --db-max-connections: must be at least --batches-in-flight plus two \
             (6) on Postgres: each batch in flight holds a connection while it is produced, \
             publishing holds one while it sends, and DispatchAdmin needs one; got 5"
        );
        assert!(config("postgresql://db/waybill", "6", "4").is_ok());
        assert!(config("postgres://db/waybill", "3", "1").is_ok());
        // SQLite leases hold no connection while their batch is produced.
        assert!(config("sqlite://waybill.db", "2", "4").is_ok());
    }

    #[test]
    fn refuses_a_lease_shorter_than_a_send() {
        let error = parse(["x", "--lease", "10s", "--produce-timeout", "15s"])
            .expect("parse")
            .args
            .into_config()
            .expect_err("invalid");
        assert_eq!(error.flag, "--lease");
        assert_eq!(
            error.to_string(),
            "invalid setting --lease: must exceed --produce-timeout (15s) by more than a second, \
             or a slow send would outlive its lease; got 10s"
        );
    }

    #[test]
    fn lease_help_states_the_rule_the_check_applies() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.contains("Must exceed --produce-timeout by more than a second"),
            "{help}"
        );
        // Exactly a second more is refused, a little over is accepted: what the help says.
        for (lease, valid) in [("16s", false), ("16100ms", true)] {
            let result = parse(["x", "--lease", lease, "--produce-timeout", "15s"])
                .expect("parse")
                .args
                .into_config();
            assert_eq!(result.is_ok(), valid, "--lease {lease}");
        }
    }

    #[test]
    fn refuses_a_retention_under_an_hour_a_zero_cleanup_interval_and_a_long_publish_interval() {
        for (flag, value, valid) in [
            ("--publish-interval", "10s", true),
            ("--publish-interval", "11s", false),
            ("--retention", "59m", false),
            ("--retention", "1h", true),
            ("--cleanup-interval", "0s", false),
            ("--cleanup-interval", "1s", true),
        ] {
            let result = parse(["x", flag, value]).expect("parse").args.into_config();
            match result {
                Ok(config) if valid => {
                    let set = match flag {
                        "--retention" => config.relay.retention,
                        "--publish-interval" => config.relay.publish_interval,
                        _ => config.relay.cleanup_interval,
                    };
                    assert_eq!(format_duration(set), value);
                }
                Err(error) if !valid => assert_eq!(error.flag, flag, "{error}"),
                other => panic!("{flag} {value}: {other:?}"),
            }
        }
    }

    #[test]
    fn event_batch_size_is_bounded() {
        for (value, valid) in [("0", false), ("1", true), ("50000", true), ("50001", false)] {
            let result = parse(["x", "--event-batch-size", value])
                .expect("parse")
                .args
                .into_config();
            match result {
                Ok(config) if valid => {
                    assert_eq!(config.relay.event_batch_size.to_string(), value);
                }
                Err(error) if !valid => {
                    assert_eq!(error.flag, "--event-batch-size");
                    assert!(error.rule.ends_with(&format!("got {value}")), "{error}");
                }
                other => panic!("--event-batch-size {value}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_batches_in_flight_out_of_range() {
        for value in ["0", "17"] {
            let error = parse(["x", "--batches-in-flight", value])
                .expect("parse")
                .args
                .into_config()
                .expect_err("invalid");
            assert_eq!(error.flag, "--batches-in-flight");
            assert!(error.rule.ends_with(&format!("got {value}")), "{error}");
        }
    }

    #[test]
    fn reads_durations_and_thresholds() {
        let config = parse([
            "x",
            "--poll-interval",
            "250ms",
            "--audit-threshold",
            "USD=500,EUR=700",
            "--kafka-option",
            "linger.ms=1",
        ])
        .expect("parse")
        .args
        .into_config()
        .expect("valid");
        assert_eq!(config.relay.poll_interval, Duration::from_millis(250));
        assert!(config.relay.audit.is_audited("EUR", 700));
        assert_eq!(
            config.kafka.options,
            [("linger.ms".to_owned(), "1".to_owned())]
        );
    }
}
