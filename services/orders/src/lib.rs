//! The Orders service: where a storefront places orders and customers follow them.
//!
//! - [`grpc`]: `waybill.v1.OrderService` (`PlaceOrder`, `GetOrder`, `ListOrders`, `WatchOrder`).
//! - [`domain`]: validation, pricing, page tokens — pure logic.
//! - [`store`]: the `OrderStore` trait and its one implementation on Postgres or SQLite.
//!   `PlaceOrder` writes the order, its lines, its `PLACED` event and its `PENDING` dispatch row
//!   in one transaction: the transactional outbox the dispatcher relays from.
//! - [`config`]: flags with environment fallbacks, validated into an [`OrdersConfig`].
//! - [`error`]: everything a call can fail with, and its one mapping to gRPC status codes.
//! - [`run`] starts the service from settings; [`serve`] is the seam tests and the all-in-one
//!   binary use (a bound listener and ready dependencies).

pub mod catalog;
pub mod catalog_admin;
pub mod config;
pub mod convert;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod store;

use std::{sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use waybill_proto::v1::{
    catalog_service_server::CatalogServiceServer, order_service_server::OrderServiceServer,
};
use waybill_service_kit::{
    clock::{SharedClock, SystemClock},
    db::{ChangeFeed, Database},
    grpc::ServerLimits,
    page_token::{PageTokenKey, PageTokenKeyError},
    rpc_metrics::RpcMetrics,
    run::{MetricsEndpoint, RunError as KitRunError, bind, connect},
    security::CallerAuth,
};

use crate::{catalog_admin::CatalogApi, store::OrderStore};
pub use crate::{
    config::{OrdersArgs, OrdersConfig},
    grpc::OrdersApi,
};

/// The fully qualified gRPC service name, for health reporting.
pub const SERVICE_NAME: &str = "waybill.v1.OrderService";
/// The catalog service served beside it.
pub const CATALOG_SERVICE_NAME: &str = "waybill.v1.CatalogService";

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
    /// The catalog's rows, for `CatalogService`.
    pub catalog: store::CatalogStore,
    /// How long a catalog entry read for an order is used for the next ones (see
    /// [`catalog::CatalogCache`]).
    pub catalog_cache: Duration,
}

impl OrdersDeps {
    /// Dependencies over a connected database with the system clock and a random
    /// per-process page-token key (set [`OrdersDeps::page_tokens`] to share one).
    pub fn new(db: &Database, region: impl Into<String>) -> Self {
        Self {
            store: store::for_database(db),
            catalog: store::CatalogStore::new(db),
            feed: db.feed().clone(),
            clock: Arc::new(SystemClock),
            region: region.into(),
            page_tokens: PageTokenKey::random(),
            metrics: waybill_service_kit::metrics::Metrics::new(),
            catalog_cache: DEFAULT_CATALOG_CACHE,
        }
    }
}

/// Why the service could not start or stopped with an error: the kit's reasons every service
/// shares, and Orders' own.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Binding, connecting, security settings or the server itself (as every service).
    #[error(transparent)]
    Run(#[from] waybill_service_kit::run::RunError),
    /// The page-token key setting is unusable.
    #[error(transparent)]
    PageTokenKey(#[from] PageTokenKeyError),
    /// Seeding the catalog failed. The store's error is in the message and not a `source`: it
    /// carries the driver's error both ways itself, and printed with its chain would show it
    /// twice.
    #[error("cannot seed the catalog: {0}")]
    Seed(store::StoreError),
}

impl RunError {
    /// Whether the service refused its settings before starting (TLS files, credentials, the
    /// production guard, the page-token key): a usage error, not a failure of the service.
    pub fn is_settings_error(&self) -> bool {
        match self {
            Self::Run(run) => run.is_settings_error(),
            Self::PageTokenKey(_) => true,
            Self::Seed(_) => false,
        }
    }
}

/// Runs the Orders service until `shutdown` is cancelled: binds first (a taken port fails
/// fast), connects and migrates, then serves.
pub async fn run(config: OrdersConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    let page_tokens = config.page_tokens.load()?;
    let security = config
        .security
        .load(config.listen, CallerAuth::Required)
        .map_err(KitRunError::from)?;
    if page_tokens.is_ephemeral() {
        warn!(
            "no page-token key configured: using a random one for this process, so ListOrders page tokens do not survive a restart or reach another instance (set WAYBILL_PAGE_TOKEN_KEY or --page-token-key-file)"
        );
    }
    let listener = bind(config.listen).await?;
    let db = connect(
        &config.database_url,
        config.db_max_connections,
        config.schema,
        shutdown.clone(),
    )
    .await?;
    if config.seed_catalog {
        store::seed_catalog(&db).await.map_err(RunError::Seed)?;
    }
    waybill_service_kit::run::log_started(
        "orders",
        listener.local_addr().unwrap_or(config.listen),
        &config.security,
        &db,
        &[("region", &config.region)],
    );
    let deps = OrdersDeps {
        page_tokens,
        catalog_cache: config.catalog_cache,
        ..OrdersDeps::new(&db, config.region)
    };
    db.register_metrics(&deps.metrics);
    let metrics = MetricsEndpoint::start(&config.metrics, &deps.metrics, &shutdown).await?;
    let limits = ServerLimits::from_args(&config.security, security);
    let result = serve(listener, deps, limits, shutdown).await;
    metrics.stop().await;
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
        .with_metrics(metrics)
        .with_catalog_cache(deps.catalog_cache),
    )
    // The largest valid PlaceOrder (100 lines, every text field at its bound in 4-byte
    // characters) is about 40 KiB; anything bigger is refused before it is decoded, instead of
    // tonic's 4 MiB default.
    .max_decoding_message_size(MAX_REQUEST_BYTES)
}

/// How long a catalog entry is used by default: a price change applies a second later.
pub const DEFAULT_CATALOG_CACHE: Duration = Duration::from_secs(1);

/// Largest request message Orders decodes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Largest request message `CatalogService` decodes: an `UpsertCatalogItems` of 10,000 items
/// with every field at its bound in 4-byte characters is about 9 MiB.
pub const MAX_CATALOG_REQUEST_BYTES: usize = 12 * 1024 * 1024;

/// The catalog service, for composing with others on one server.
pub fn catalog_service(deps: &OrdersDeps) -> CatalogServiceServer<CatalogApi> {
    CatalogServiceServer::new(CatalogApi::new(
        deps.catalog.clone(),
        deps.page_tokens.clone(),
    ))
    .max_decoding_message_size(MAX_CATALOG_REQUEST_BYTES)
}

/// Serves Orders (with health and reflection) on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    deps: OrdersDeps,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let limits = ServerLimits {
        rpc_metrics: Some(RpcMetrics::register(
            &deps.metrics,
            "waybill_orders",
            &[SERVICE_NAME, CATALOG_SERVICE_NAME],
        )),
        ..limits
    };
    let catalog = catalog_service(&deps);
    let routes = tonic::service::Routes::new(service(deps, shutdown.clone())).add_service(catalog);
    let names = [SERVICE_NAME, CATALOG_SERVICE_NAME];
    waybill_service_kit::grpc::serve(listener, routes, &names, &limits, shutdown)
        .await
        .map_err(KitRunError::from)?;
    Ok(())
}
