//! The Dispatcher: the reliable relay from the transactional outbox to the partners' Kafka
//! topics, and the `DispatchAdmin` gRPC service operators steer it with.
//!
//! - [`relay`]: lease a batch → route → produce → record, fenced by the lease; retries with
//!   backoff, `DEAD` after the budget, re-sends after a missed handover deadline; publishes
//!   history events to the order-events topic.
//! - [`domain`]: routing, backoff, audit rule, records — pure logic.
//! - [`store`]: the store's traits by their users ([`store::RelayStore`],
//!   [`store::AdminStore`]; [`store::DispatchStore`] is both) and their one implementation on
//!   Postgres or SQLite.
//! - [`kafka`]: producer settings (one place), the records and headers, topic creation.
//! - [`grpc`] and [`convert`]: `waybill.v1.DispatchAdmin` (dispatches, partners and keys,
//!   routes); its request checks are in [`domain::request`].
//! - [`metrics`]: in-process counters and produce latency, served by `GetRelayStats`.
//! - [`config`]: flags with environment fallbacks, validated into a [`DispatcherConfig`].
//! - [`error`]: everything an admin call or a relay step can fail with, and its one mapping to
//!   gRPC.
//! - [`embedded`]: the in-process broker `waybill dev` and `waybill demo` use.
//!
//! The test broker (the mock cluster or a Tansu process) is `waybill_test_kit::broker`.
//!
//! [`run`] starts the service from settings; [`serve`] is the seam tests and the all-in-one
//! binary use (a bound listener and ready dependencies).

pub mod config;
pub mod convert;
pub mod domain;
pub mod embedded;
pub mod error;
pub mod grpc;
pub mod kafka;
pub mod metrics;
pub mod relay;
pub mod store;

use std::{sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{info, warn};
use waybill_proto::v1::dispatch_admin_server::DispatchAdminServer;
use waybill_service_kit::{
    clock::{SharedClock, SystemClock},
    db::Database,
    grpc::{HealthParts, ServerLimits},
    rpc_metrics::RpcMetrics,
    run::{MetricsEndpoint, RunError as KitRunError, bind, connect},
    security::CallerAuth,
};

pub use crate::config::{DispatcherArgs, DispatcherConfig, RelaySettings};
use crate::{
    grpc::AdminApi,
    kafka::{
        AdminTopicCreator, KafkaSettings, TopicCreator,
        producer::{OrderProducer, SendHealth},
    },
    metrics::RelayMetrics,
    relay::Relay,
};

/// The fully qualified gRPC service name, for health reporting.
pub const SERVICE_NAME: &str = "waybill.v1.DispatchAdmin";

/// The health-check name of the relay itself: `SERVING` while its producer gets messages
/// acknowledged, `NOT_SERVING` while whole batches fail (the broker is down or the producer
/// broke; it is rebuilt by itself). The admin API stays `SERVING` meanwhile: operators can
/// still look and act.
pub const RELAY_HEALTH_NAME: &str = "waybill.dispatcher.Relay";

/// Largest request message the admin API decodes.
pub const MAX_REQUEST_BYTES: usize = 128 * 1024;

/// What a dispatcher needs to serve.
#[derive(Debug, Clone)]
pub struct DispatcherDeps {
    /// The connected, migrated database (its change feed wakes the relay).
    pub db: Database,
    /// Time source.
    pub clock: SharedClock,
    /// Broker connection.
    pub kafka: KafkaSettings,
    /// Creates partner topics on enrolment.
    pub topic_creator: Arc<dyn TopicCreator>,
    /// The relay's settings.
    pub relay: RelaySettings,
    /// gRPC server limits.
    pub limits: ServerLimits,
    /// How long an in-flight batch may take to finish after shutdown begins.
    pub shutdown_grace: Duration,
    /// Where the relay registers its Prometheus series (`waybill_dispatcher_*`).
    pub metrics: waybill_service_kit::metrics::Metrics,
}

impl DispatcherDeps {
    /// Dependencies with the system clock, the Admin-API topic creator and default limits.
    pub fn new(db: Database, kafka: KafkaSettings, relay: RelaySettings) -> Result<Self, RunError> {
        let topic_creator = Arc::new(AdminTopicCreator::new(&kafka).map_err(RunError::Kafka)?);
        Ok(Self {
            db,
            clock: Arc::new(SystemClock),
            kafka,
            topic_creator,
            relay,
            limits: ServerLimits::default(),
            shutdown_grace: Duration::from_secs(10),
            metrics: waybill_service_kit::metrics::Metrics::new(),
        })
    }
}

/// Why the service could not start or stopped with an error: the kit's reasons every service
/// shares, and the dispatcher's own.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Binding, connecting, security settings or the server itself (as every service).
    #[error(transparent)]
    Run(#[from] KitRunError),
    /// A Kafka client could not be built (bad settings).
    #[error("cannot set up the kafka client")]
    Kafka(#[source] rdkafka::error::KafkaError),
    /// A Kafka setting this build cannot honour (checked before anything listens).
    #[error(transparent)]
    KafkaSettings(#[from] waybill_service_kit::kafka::UnsupportedKafkaSetting),
}

impl RunError {
    /// Whether the service refused its settings before starting (TLS files, credentials, the
    /// production guard): a usage error, not a failure of the service.
    pub fn is_settings_error(&self) -> bool {
        match self {
            Self::Run(run) => run.is_settings_error(),
            Self::KafkaSettings(_) => true,
            Self::Kafka(_) => false,
        }
    }
}

/// Runs the dispatcher until `shutdown` is cancelled: binds first (a taken port fails fast),
/// connects and migrates, then serves the admin API and runs the relay.
pub async fn run(config: DispatcherConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    // Operators only: the admin API enrols partners and re-routes orders.
    let security = config
        .security
        .load(config.listen, CallerAuth::Required)
        .map_err(KitRunError::from)?;
    waybill_service_kit::kafka::check_client_config(&config.kafka.producer_config())?;
    let listener = bind(config.listen).await?;
    let db = connect(
        &config.database_url,
        config.db_max_connections,
        config.schema,
        shutdown.clone(),
    )
    .await?;
    let kafka_protocol = config
        .kafka
        .options
        .iter()
        .find(|(key, _)| key == "security.protocol")
        .map_or("PLAINTEXT", |(_, value)| value.as_str());
    waybill_service_kit::run::log_started(
        "dispatcher",
        listener.local_addr().unwrap_or(config.listen),
        &config.security,
        &db,
        &[
            ("instance_id", &config.relay.instance_id),
            ("brokers", &config.kafka.brokers),
            ("kafka_security", kafka_protocol),
        ],
    );
    let mut deps = DispatcherDeps::new(db.clone(), config.kafka, config.relay)?;
    deps.limits = ServerLimits::from_args(&config.security, security);
    db.register_metrics(&deps.metrics);
    let metrics = MetricsEndpoint::start(&config.metrics, &deps.metrics, &shutdown).await?;
    let result = serve(listener, deps, shutdown).await;
    metrics.stop().await;
    db.close().await;
    result
}

/// Serves `DispatchAdmin` (with health and reflection) on `listener` and runs the relay, until
/// `shutdown` is cancelled; returns once the relay has released its leases and flushed.
pub async fn serve(
    listener: TcpListener,
    deps: DispatcherDeps,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let store = store::for_database(&deps.db);
    let producer = OrderProducer::new(&deps.kafka).map_err(RunError::Kafka)?;
    let metrics = Arc::new(RelayMetrics::default());
    deps.metrics
        .register("waybill_dispatcher", |registry| metrics.register(registry));
    {
        // The backlog is the database's (all instances'): read it at scrape time.
        let (store, metrics, clock) = (store.clone(), metrics.clone(), deps.clock.clone());
        deps.metrics.on_scrape(move || {
            let (store, metrics, clock) = (store.clone(), metrics.clone(), clock.clone());
            Box::pin(async move {
                let now = clock.now();
                match store.backlog(now).await {
                    Ok(backlog) => metrics.set_backlog(&backlog, now),
                    Err(error) => warn!(%error, "metrics: cannot read the dispatch backlog"),
                }
            })
        });
    }
    let send_health = producer.health().clone();
    deps.metrics.register("waybill_dispatcher", |registry| {
        kafka::health_metrics::register(registry, send_health.clone());
    });
    let relay = Relay::new(
        store.clone(),
        producer,
        deps.topic_creator.clone(),
        deps.clock.clone(),
        deps.db.feed().clone(),
        deps.relay.clone(),
        metrics.clone(),
    );
    let admin = AdminApi::new(
        store.clone(),
        deps.topic_creator.clone(),
        deps.relay.topics.clone(),
        deps.clock.clone(),
        metrics.clone(),
        send_health.clone(),
        deps.relay.instance_id.clone(),
    );
    let health = HealthParts::new();

    let tasks = TaskTracker::new();
    tasks.spawn(relay.run(shutdown.clone(), deps.shutdown_grace));
    tasks.spawn(report_relay_health(
        health.reporter(),
        send_health.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(log_stats(
        store,
        metrics,
        send_health,
        deps.clock.clone(),
        deps.relay.stats_interval,
        shutdown.clone(),
    ));
    tasks.close();

    // The largest valid admin request is a RetryDispatches naming 1,000 order ids (~40 KiB);
    // anything bigger is refused before it is decoded, instead of tonic's 4 MiB default.
    let routes = tonic::service::Routes::new(
        DispatchAdminServer::new(admin).max_decoding_message_size(MAX_REQUEST_BYTES),
    );
    let limits = ServerLimits {
        rpc_metrics: Some(RpcMetrics::register(
            &deps.metrics,
            "waybill_dispatcher",
            &[SERVICE_NAME],
        )),
        ..deps.limits.clone()
    };
    let served = waybill_service_kit::grpc::serve_with_health(
        listener,
        routes,
        &[SERVICE_NAME],
        &limits,
        health,
        shutdown.clone(),
    )
    .await;
    // The server returns on shutdown or on failure; either way the relay must stop too.
    shutdown.cancel();
    tasks.wait().await;
    served.map_err(|error| RunError::Run(error.into()))
}

/// Keeps [`RELAY_HEALTH_NAME`] in step with whether the producer can send.
async fn report_relay_health(
    reporter: HealthReporter,
    send_health: Arc<SendHealth>,
    shutdown: CancellationToken,
) {
    let mut can_send = send_health.subscribe();
    loop {
        let status = if *can_send.borrow_and_update() {
            ServingStatus::Serving
        } else {
            warn!(last_error = ?send_health.snapshot().last_error, "relay cannot send: health NOT_SERVING until a batch gets through");
            ServingStatus::NotServing
        };
        reporter.set_service_status(RELAY_HEALTH_NAME, status).await;
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = can_send.changed() => if changed.is_err() { break },
        }
    }
    reporter
        .set_service_status(RELAY_HEALTH_NAME, ServingStatus::NotServing)
        .await;
}

/// Logs the metrics and backlog every `interval`: the log-based view of the relay's health.
async fn log_stats(
    store: Arc<dyn store::AdminStore>,
    metrics: Arc<RelayMetrics>,
    send_health: Arc<SendHealth>,
    clock: SharedClock,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let now = clock.now();
        match store.backlog(now).await {
            Ok(backlog) => {
                metrics.set_backlog(&backlog, now);
                let m = metrics.snapshot();
                let producer = send_health.snapshot();
                let by_state: Vec<String> = backlog
                    .by_state
                    .iter()
                    .map(|(state, n)| format!("{}={n}", state.short_name()))
                    .collect();
                let oldest_due_age_ms = backlog
                    .oldest_due_at
                    .map_or(0, |at| (now - at).num_milliseconds().max(0));
                info!(
                    backlog = %by_state.join(","),
                    oldest_due_age_ms,
                    sent = m.sent,
                    retries = m.retries,
                    dead = m.dead,
                    unroutable = m.unroutable,
                    resent = m.resent,
                    handover_extended = m.handover_extended,
                    handover_probe_failures = m.handover_probe_failures,
                    unacknowledged = m.unacknowledged,
                    fenced = m.fenced,
                    can_send = producer.can_send,
                    producer_rebuilds = producer.rebuilds,
                    audit_pending = backlog.audit_pending,
                    produce_p50_us = m.produce_latency_p50.as_micros() as u64,
                    produce_p99_us = m.produce_latency_p99.as_micros() as u64,
                    "relay stats"
                );
            }
            Err(error) => warn!(%error, "cannot read the dispatch backlog"),
        }
    }
}
