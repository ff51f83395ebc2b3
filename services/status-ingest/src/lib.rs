//! StatusIngest: where partners report what happened to an order, with tokens signed by their
//! enrolled keys.
//!
//! - [`grpc`]: `waybill.v1.StatusIngest` (`ReportStatus`, `ReportStatuses`, `GetReportStats`): the checks in
//!   order, each refusal counted by reason.
//! - [`domain`]: request validation and the decision an accepted report carries out (status
//!   progression, acknowledgement, re-routing after a rejection, flagging after a final state).
//! - [`store`]: the [`store::IngestStore`] trait and its one implementation on Postgres or
//!   SQLite; reports written by a group commit (one transaction per batch of concurrent
//!   reports, a savepoint each, every caller answered after the commit), the replay guard in
//!   the database.
//! - [`keys`]: the enrolled keys an instance remembers (revocation is checked in the store).
//! - [`metrics`]: in-process counters.
//! - [`config`]: flags with environment fallbacks, validated into a [`StatusIngestConfig`].
//! - [`error`]: everything a report can be refused with, and its one mapping to gRPC.
//! - The token itself (format, checks, key files) is the `waybill-token` crate, shared with the
//!   connector SDK.
//!
//! [`run`] starts the service from settings; [`serve`] is the seam tests and the all-in-one
//! binary use (a bound listener and ready dependencies).

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod keys;
pub mod metrics;
pub mod store;

use std::{sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use waybill_proto::v1::status_ingest_server::StatusIngestServer;
use waybill_service_kit::{
    clock::{SharedClock, SystemClock},
    db::{ChangeFeed, Database},
    grpc::ServerLimits,
    rpc_metrics::RpcMetrics,
    run::{MetricsEndpoint, bind, connect},
    security::CallerAuth,
};

pub use crate::{
    config::{StatusIngestArgs, StatusIngestConfig},
    grpc::IngestApi,
};
use crate::{metrics::IngestMetrics, store::IngestStore};

/// The fully qualified gRPC service name, for health reporting.
pub const SERVICE_NAME: &str = "waybill.v1.StatusIngest";

/// What StatusIngest needs to serve.
#[derive(Debug, Clone)]
pub struct IngestDeps {
    /// Where reports land.
    pub store: Arc<dyn IngestStore>,
    /// Time source (token expiry; the store has its own for recorded times, the same one in
    /// [`IngestDeps::new`]).
    pub clock: SharedClock,
    /// The audience tokens must name.
    pub audience: String,
    /// Counters.
    pub metrics: Arc<IngestMetrics>,
    /// Where the counters are registered as Prometheus series (`waybill_status_ingest_*`).
    pub registry: waybill_service_kit::metrics::Metrics,
    /// The database's commit notifications: a report that overtook the relay's bookkeeping of
    /// its order's send waits on them for the relay's commit (`None`: it is answered
    /// `UNAVAILABLE` with a retry hint at once).
    pub relay_commits: Option<ChangeFeed>,
}

impl IngestDeps {
    /// Dependencies over a connected database with the system clock.
    pub fn new(db: &Database, audience: impl Into<String>) -> Self {
        let clock: SharedClock = Arc::new(SystemClock);
        Self {
            store: store::for_database_with_clock(db, clock.clone()),
            clock,
            audience: audience.into(),
            metrics: Arc::new(IngestMetrics::default()),
            registry: waybill_service_kit::metrics::Metrics::new(),
            relay_commits: Some(db.feed().clone()),
        }
    }
}

/// Why the service could not start or stopped with an error: StatusIngest has no reasons of its
/// own beyond those every service shares (binding, connecting, security settings, the server).
pub use waybill_service_kit::run::RunError;

/// Runs StatusIngest until `shutdown` is cancelled: binds first (a taken port fails fast),
/// connects and migrates, then serves, deleting expired token ids and logging the counters
/// every stats interval.
pub async fn run(config: StatusIngestConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    // Open at the transport level (partners sign their reports), but TLS off loopback.
    let security = config.security.load(config.listen, CallerAuth::InCall)?;
    let listener = bind(config.listen).await?;
    let db = connect(
        &config.database_url,
        config.db_max_connections,
        config.schema,
        shutdown.clone(),
    )
    .await?;
    let deps = IngestDeps::new(&db, config.audience.clone());
    db.register_metrics(&deps.registry);
    let metrics = MetricsEndpoint::start(&config.metrics, &deps.registry, &shutdown).await?;
    waybill_service_kit::run::log_started(
        "status-ingest",
        listener.local_addr().unwrap_or(config.listen),
        &config.security,
        &db,
        &[("audience", &config.audience)],
    );
    let maintenance = tokio::spawn(maintain(
        deps.clone(),
        config.stats_interval,
        shutdown.clone(),
    ));
    let limits = ServerLimits::from_args(&config.security, security);
    let result = serve(listener, deps, limits, shutdown).await;
    metrics.stop().await;
    let _ = maintenance.await;
    db.close().await;
    result
}

/// Every `interval` until `shutdown`: forget token ids that can no longer be replayed, and log
/// the counters.
pub async fn maintain(deps: IngestDeps, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
        match deps.store.purge_token_ids(deps.clock.now()).await {
            Ok(purged) if purged > 0 => info!(purged, "expired report token ids forgotten"),
            Ok(_) => {}
            Err(error) => warn!(%error, "cannot purge expired report token ids"),
        }
        let stats = deps.metrics.snapshot();
        let rejected: u64 = stats.rejected.values().sum();
        info!(
            accepted = stats.accepted,
            duplicates = stats.duplicates,
            flagged_for_review = stats.flagged_for_review,
            rejected,
            rejected_by_reason = ?stats.rejected.iter().filter(|(_, n)| **n > 0).collect::<Vec<_>>(),
            "report stats"
        );
    }
}

/// The tonic service, for composing with others on one server.
pub fn service(deps: IngestDeps) -> StatusIngestServer<IngestApi> {
    deps.registry.register("waybill_status_ingest", |registry| {
        deps.metrics.register(registry)
    });
    StatusIngestServer::new(
        IngestApi::new(deps.store, deps.clock, deps.audience, deps.metrics)
            .waiting_for_relay_on(deps.relay_commits),
    )
    .max_decoding_message_size(MAX_REQUEST_BYTES)
}

/// The largest request StatusIngest reads (the contract's, shared with clients).
pub use waybill_proto::limits::STATUS_INGEST_MAX_REQUEST_BYTES as MAX_REQUEST_BYTES;

/// Serves StatusIngest (with health and reflection) on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    deps: IngestDeps,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let limits = ServerLimits {
        rpc_metrics: Some(RpcMetrics::register(
            &deps.registry,
            "waybill_status_ingest",
            &[SERVICE_NAME],
        )),
        ..limits
    };
    let routes = tonic::service::Routes::new(service(deps));
    waybill_service_kit::grpc::serve(listener, routes, &[SERVICE_NAME], &limits, shutdown).await?;
    Ok(())
}
