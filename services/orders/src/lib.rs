//! The Orders service: where a storefront places orders and customers follow them.
//!
//! - [`grpc`]: `waybill.v1.OrderService` (`PlaceOrder`, `GetOrder`, `ListOrders`, `WatchOrder`).
//! - [`domain`]: validation, pricing, page tokens — pure logic.
//! - [`store`]: the `OrderStore` trait and its one implementation on Postgres or SQLite.
//!   `PlaceOrder` writes the order, its lines, its `PLACED` event and its `PENDING` dispatch row
//!   in one transaction: the transactional outbox the dispatcher relays from.
//! - [`run`] starts the service from settings; [`serve`] is the seam tests and the all-in-one
//!   binary use (a bound listener and ready dependencies).

pub mod convert;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod store;

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use waybill_proto::v1::order_service_server::OrderServiceServer;
use waybill_service_kit::{
    clock::{SharedClock, SystemClock},
    db::{ChangeFeed, Database, DbError, PoolSettings},
    grpc::ServerLimits,
    page_token::{PageTokenArgs, PageTokenKey, PageTokenKeyError},
    security::{CallerAuth, SecurityArgs, SecurityError},
};

pub use crate::grpc::OrdersApi;
use crate::store::OrderStore;

/// The fully qualified gRPC service name, for health reporting.
pub const SERVICE_NAME: &str = "waybill.v1.OrderService";

/// Settings of `waybill orders`.
#[derive(Debug, Clone, clap::Args)]
pub struct OrdersArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "WAYBILL_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// `postgres://user@host/db` in production, `sqlite://path.db` embedded.
    #[arg(
        long,
        env = "WAYBILL_DATABASE_URL",
        default_value = "sqlite://.waybill/waybill.db"
    )]
    pub database_url: String,
    /// Name of this Waybill region, stamped on every order.
    #[arg(long, env = "WAYBILL_REGION", default_value = "local")]
    pub region: String,
    /// Load the sample catalog (`services/orders/seed/catalog.sql`) at start-up.
    #[arg(long, env = "WAYBILL_SEED_CATALOG")]
    pub seed_catalog: bool,
    /// Most database connections this service opens.
    #[arg(long, env = "WAYBILL_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Page-token key.
    #[command(flatten)]
    pub page_tokens: PageTokenArgs,
    /// The Prometheus metrics listener (off by default).
    #[command(flatten)]
    pub metrics: waybill_service_kit::metrics::MetricsArgs,
    /// TLS, credentials and rate limits.
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// What the Orders service needs to serve.
#[derive(Debug, Clone)]
pub struct OrdersDeps {
    /// Where orders live.
    pub store: Arc<dyn OrderStore>,
    /// Commit notifications (wakes `WatchOrder`).
    pub feed: ChangeFeed,
    /// Time source.
    pub clock: SharedClock,
    /// Region stamped on new orders.
    pub region: String,
    /// Authenticates `ListOrders` page tokens; instances behind one address must share it.
    pub page_tokens: PageTokenKey,
    /// Where the service registers its Prometheus series (`waybill_orders_*`).
    pub metrics: waybill_service_kit::metrics::Metrics,
}

impl OrdersDeps {
    /// Dependencies over a connected database with the system clock and a random
    /// per-process page-token key (set [`OrdersDeps::page_tokens`] to share one).
    pub fn new(db: &Database, region: impl Into<String>) -> Self {
        Self {
            store: store::for_database(db),
            feed: db.feed().clone(),
            clock: Arc::new(SystemClock),
            region: region.into(),
            page_tokens: PageTokenKey::random(),
            metrics: waybill_service_kit::metrics::Metrics::new(),
        }
    }
}

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Connecting or migrating failed.
    #[error(transparent)]
    Database(#[from] DbError),
    /// The page-token key setting is unusable.
    #[error(transparent)]
    PageTokenKey(#[from] PageTokenKeyError),
    /// TLS, credentials or the production guard refused the settings.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// Seeding the catalog failed.
    #[error("cannot seed the catalog: {0}")]
    Seed(#[from] store::StoreError),
    /// The gRPC server failed.
    #[error("grpc server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Runs the Orders service until `shutdown` is cancelled: binds first (a taken port fails
/// fast), connects and migrates, then serves.
pub async fn run(args: OrdersArgs, shutdown: CancellationToken) -> Result<(), RunError> {
    let page_tokens = args.page_tokens.load()?;
    let security = args.security.load(args.listen, CallerAuth::Required)?;
    if page_tokens.is_ephemeral() {
        warn!(
            "no page-token key configured: using a random one for this process, so ListOrders page tokens do not survive a restart or reach another instance (set WAYBILL_PAGE_TOKEN_KEY or --page-token-key-file)"
        );
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: args.listen,
            source,
        })?;
    let settings = PoolSettings {
        max_connections: args.db_max_connections,
        ..PoolSettings::default()
    };
    let db = Database::connect(&args.database_url, &settings, shutdown.clone()).await?;
    if args.seed_catalog {
        store::seed_catalog(&db).await?;
    }
    info!(
        addr = %args.listen,
        region = %args.region,
        tls = security.tls.is_some(),
        credentials = security.credentials.is_some(),
        "orders service listening"
    );
    let deps = OrdersDeps {
        page_tokens,
        ..OrdersDeps::new(&db, args.region)
    };
    // Stopped after the server, whether it ended by shutdown or by failure.
    let metrics_stop = shutdown.child_token();
    let metrics = args
        .metrics
        .start(&deps.metrics, metrics_stop.clone())
        .await
        .map_err(|source| RunError::Bind {
            addr: args.metrics.metrics_listen.unwrap_or(args.listen),
            source,
        })?;
    let limits = ServerLimits {
        security,
        ..ServerLimits::default()
    };
    let result = serve(listener, deps, limits, shutdown).await;
    metrics_stop.cancel();
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    db.close().await;
    result
}

/// The tonic service, for composing with others on one server.
pub fn service(deps: OrdersDeps, shutdown: CancellationToken) -> OrderServiceServer<OrdersApi> {
    let metrics = Arc::new(grpc::OrdersMetrics::default());
    deps.metrics
        .register("waybill_orders", |registry| metrics.register(registry));
    OrderServiceServer::new(
        OrdersApi::new(
            deps.store,
            deps.feed,
            deps.clock,
            deps.region,
            deps.page_tokens,
            shutdown,
        )
        .with_metrics(metrics),
    )
    // The largest valid PlaceOrder (100 lines, every text field at its bound in 4-byte
    // characters) is about 40 KiB; anything bigger is refused before it is decoded, instead of
    // tonic's 4 MiB default.
    .max_decoding_message_size(MAX_REQUEST_BYTES)
}

/// Largest request message Orders decodes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Serves Orders (with health and reflection) on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    deps: OrdersDeps,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let routes = tonic::service::Routes::new(service(deps, shutdown.clone()));
    waybill_service_kit::grpc::serve(listener, routes, &[SERVICE_NAME], &limits, shutdown).await?;
    Ok(())
}
