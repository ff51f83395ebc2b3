//! What a stack runs, where it listens, which broker the dispatcher produces to and which
//! registries the services' series go into.

use std::{net::SocketAddr, sync::Arc};

use waybill_dispatcher::{
    RelaySettings,
    kafka::{KafkaSettings, TopicCreator},
};
use waybill_service_kit::{
    metrics::Metrics,
    security::{ReloadableTls, ServerSecurity},
};

/// How to run a stack. Orders always runs; the dispatcher and StatusIngest when set.
pub struct StackSettings {
    /// The one database every service uses (`postgres://…` or `sqlite://…`; a SQLite file's
    /// directory is created if missing). Migrated at start.
    pub database_url: String,
    /// Load the sample catalog (idempotent).
    pub seed_catalog: bool,
    /// This region's name (Orders stamps it on orders, the relay on its records).
    pub region: String,
    /// Where Orders listens (port 0: any free port, see [`crate::Stack::orders_addr`]).
    pub orders_listen: SocketAddr,
    /// The dispatcher, its admin API and its broker.
    pub dispatcher: Option<DispatcherSettings>,
    /// StatusIngest; when it runs, its address is every order's reply-to.
    pub status_ingest: Option<IngestSettings>,
    /// Where each service's series go.
    pub metrics: StackMetrics,
    /// TLS, callers' credentials and rate limits of every listener (none by default);
    /// StatusIngest takes its certificate from [`IngestSettings::tls`] when that is set.
    pub security: ServerSecurity,
}

impl StackSettings {
    /// Orders alone on `database_url`, listening on `orders_listen`, with the sample catalog,
    /// region `local` and one registry for every service.
    pub fn new(database_url: impl Into<String>, orders_listen: SocketAddr) -> Self {
        Self {
            database_url: database_url.into(),
            seed_catalog: true,
            region: "local".to_owned(),
            orders_listen,
            dispatcher: None,
            status_ingest: None,
            metrics: StackMetrics::shared(&Metrics::new()),
            security: ServerSecurity::default(),
        }
    }
}

/// The dispatcher's part of a stack.
pub struct DispatcherSettings {
    /// Where its admin API listens.
    pub listen: SocketAddr,
    /// The broker it produces to.
    pub broker: Broker,
    /// The relay's settings. `reply_to` is replaced by StatusIngest's address when the stack
    /// runs one; `region` by the stack's.
    pub relay: RelaySettings,
}

impl DispatcherSettings {
    /// The relay's defaults, on `broker`.
    pub fn new(listen: SocketAddr, broker: Broker) -> Self {
        Self {
            listen,
            broker,
            relay: RelaySettings::default(),
        }
    }
}

/// The broker a stack's dispatcher produces to.
pub enum Broker {
    /// librdkafka's in-process mock cluster (`waybill dev`, `waybill demo`: nothing to
    /// install), started with the stack and stopped after it; the relay's audit and
    /// order-events topics are created on it.
    Embedded,
    /// A broker that runs elsewhere (a cluster, a test broker); its topics are its owner's.
    Kafka {
        /// The producer's settings.
        settings: KafkaSettings,
        /// How partner topics are created on enrolment (`None`: the Kafka Admin API).
        topic_creator: Option<Arc<dyn TopicCreator>>,
    },
}

/// StatusIngest's part of a stack.
pub struct IngestSettings {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The audience report tokens must carry.
    pub audience: String,
    /// Its TLS certificate (the reply-to is then `https://…`).
    pub tls: Option<ReloadableTls>,
}

impl IngestSettings {
    /// Plaintext, for `audience`.
    pub fn new(listen: SocketAddr, audience: impl Into<String>) -> Self {
        Self {
            listen,
            audience: audience.into(),
            tls: None,
        }
    }
}

/// The registry each service registers its series in: one for all (`waybill dev` serves one
/// endpoint) or one each (tests read a service's series alone).
#[derive(Debug, Clone)]
pub struct StackMetrics {
    /// Orders' series, and the shared pool's (`waybill_db_pool_*`).
    pub orders: Metrics,
    /// The dispatcher's series.
    pub dispatcher: Metrics,
    /// StatusIngest's series (the same counters across a restart).
    pub status_ingest: Metrics,
}

impl StackMetrics {
    /// Every service in `metrics`.
    pub fn shared(metrics: &Metrics) -> Self {
        Self {
            orders: metrics.clone(),
            dispatcher: metrics.clone(),
            status_ingest: metrics.clone(),
        }
    }

    /// A registry for each service.
    pub fn separate() -> Self {
        Self {
            orders: Metrics::new(),
            dispatcher: Metrics::new(),
            status_ingest: Metrics::new(),
        }
    }
}
