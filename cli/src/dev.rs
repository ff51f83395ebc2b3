//! `waybill dev`: the whole system in one process on embedded storage and an embedded broker —
//! Orders, the dispatcher, StatusIngest and the two example partners, enrolled with their
//! routes and keys — left running for trying things with grpcurl. Its data stays in the data
//! directory between runs.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use tokio_util::sync::CancellationToken;
use waybill_connector_sdk::examples::ExamplePartner;
use waybill_dispatcher::RelaySettings;

use crate::system::{ROUTES, System, SystemSettings};

/// Settings of `waybill dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the Orders service listens.
    #[arg(long, env = "WAYBILL_ORDERS_LISTEN", default_value = "127.0.0.1:50051")]
    orders_listen: SocketAddr,
    /// Where the dispatcher's admin API listens.
    #[arg(
        long,
        env = "WAYBILL_DISPATCHER_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    dispatcher_listen: SocketAddr,
    /// Where StatusIngest listens (partners' ReportStatus).
    #[arg(
        long,
        env = "WAYBILL_STATUS_INGEST_LISTEN",
        default_value = "127.0.0.1:50053"
    )]
    status_ingest_listen: SocketAddr,
    /// Where every service's and partner's Prometheus metrics are served (`GET /metrics`).
    #[arg(long, env = "WAYBILL_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    metrics_listen: SocketAddr,
    /// The audience report tokens must carry here.
    #[arg(long, env = "WAYBILL_TOKEN_AUDIENCE", default_value = "waybill-local")]
    audience: String,
    /// Where everything is kept between runs: the database (unless --database-url), the
    /// example partners' keys (`keys/`) and their inboxes. Delete it to start over.
    #[arg(long, env = "WAYBILL_DATA_DIR", default_value = ".waybill")]
    data_dir: PathBuf,
    /// Storage (default: `sqlite://<data dir>/waybill.db`); `postgres://…` works too.
    #[arg(long, env = "WAYBILL_DATABASE_URL")]
    database_url: Option<String>,
    /// A real Kafka broker (`host:port,…`) instead of the embedded in-memory one.
    #[arg(long, env = "WAYBILL_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Name of this Waybill region.
    #[arg(long, env = "WAYBILL_REGION", default_value = "local")]
    region: String,
    /// How long after accepting an order `local-express` reports it shipped, in milliseconds.
    #[arg(long, env = "WAYBILL_SHIPPED_AFTER_MS", default_value_t = 2000)]
    shipped_after_ms: u64,
}

/// Runs until `shutdown`.
pub async fn run(args: DevArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let database_url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", args.data_dir.join("waybill.db").display()));
    // Bound first, like the services' ports: a taken port fails before anything starts.
    let metrics_listener = waybill_service_kit::run::bind(args.metrics_listen).await?;
    let metrics_stop = shutdown.clone();
    let system = System::start(
        SystemSettings {
            orders_listen: args.orders_listen,
            dispatcher_listen: args.dispatcher_listen,
            status_ingest_listen: args.status_ingest_listen,
            audience: args.audience.clone(),
            database_url: database_url.clone(),
            kafka_brokers: args.kafka_brokers.clone(),
            region: args.region.clone(),
            data_dir: args.data_dir.clone(),
            keep_keys: true,
            shipped_after: Duration::from_millis(args.shipped_after_ms),
            audit: RelaySettings::default().audit,
            handover_deadline: Duration::from_secs(120),
            observe: Default::default(),
        },
        shutdown,
    )
    .await?;
    // A new consumer group's first assignment is delayed by the broker: wait for it, so the
    // first order placed after the banner is handed over at once.
    if let Err(error) = system.partners_ready(Duration::from_secs(30)).await {
        tracing::warn!(%error, "the example partners are not consuming yet; orders wait for them");
    }
    tokio::spawn(waybill_service_kit::metrics::serve(
        metrics_listener,
        system.metrics.clone(),
        metrics_stop,
    ));
    print_banner(&args, &database_url, &system);
    system.wait().await
}

fn print_banner(args: &DevArgs, database_url: &str, system: &System) {
    let (orders, dispatcher, ingest) = (
        system.orders_addr,
        system.dispatcher_addr,
        system.ingest_addr,
    );
    let data_dir = args.data_dir.display();
    println!("waybill dev is running (ctrl-c stops it)");
    println!(
        "  storage        {database_url}  (kept between runs; delete {data_dir} to start over)"
    );
    if system.embedded() {
        println!(
            "  kafka          {} (embedded, in memory: nothing on it survives a restart; unconfirmed orders are re-sent)",
            system.brokers
        );
    } else {
        println!("  kafka          {}", system.brokers);
    }
    println!("  orders         grpc://{orders}  (waybill.v1.OrderService)");
    println!("  dispatcher     grpc://{dispatcher}  (waybill.v1.DispatchAdmin)");
    println!(
        "  status-ingest  grpc://{ingest}  (waybill.v1.StatusIngest, token audience {:?})",
        args.audience
    );
    println!(
        "  metrics        http://{}/metrics  (Prometheus, every service and partner)",
        args.metrics_listen
    );
    for partner in ExamplePartner::ALL {
        let countries: Vec<String> = ROUTES
            .iter()
            .filter(|(p, _, _)| *p == partner)
            .map(|(_, country, priority)| format!("{country}({priority})"))
            .collect();
        let key_id = system
            .key_ids
            .iter()
            .find(|(p, _)| *p == partner)
            .map_or("", |(_, kid)| kid.as_str());
        println!(
            "  partner        {partner} (in-process) routes {} key {} ({})",
            countries.join(" "),
            key_id,
            System::key_file(&args.data_dir, partner).display()
        );
    }
    let key_id = system
        .key_ids
        .iter()
        .find(|(p, _)| *p == ExamplePartner::LocalExpress)
        .map_or("", |(_, kid)| kid.as_str());
    let key_file = System::key_file(&args.data_dir, ExamplePartner::LocalExpress);
    println!();
    println!("try (grpcurl uses the servers' reflection; no proto files needed):");
    println!(
        "  # place an order (US goes to local-express; add \"line2\":\"[reject:local-express]\" to see it re-routed)"
    );
    println!(
        "  grpcurl -plaintext -d '{{\"idempotency_key\":\"first\",\"customer\":{{\"id\":\"c1\",\"name\":\"Ada\",\"email\":\"ada@example.com\"}},\"shipping_address\":{{\"line1\":\"1 Main St\",\"city\":\"Springfield\",\"country_code\":\"US\"}},\"lines\":[{{\"sku\":\"MUG-001\",\"quantity\":2}}]}}' {orders} waybill.v1.OrderService/PlaceOrder"
    );
    println!("  # watch it travel (ctrl-c ends the watch)");
    println!(
        "  grpcurl -plaintext -d '{{\"order_id\":\"ORDER_ID\"}}' {orders} waybill.v1.OrderService/WatchOrder"
    );
    println!("  # the dispatcher's view (every operator job is a `waybill admin` command)");
    println!("  waybill admin dispatches list --partner local-express --dispatcher {dispatcher}");
    println!("  waybill admin relay stats --dispatcher {dispatcher}");
    println!("  # report a status as local-express would, signed with its key");
    println!(
        "  waybill token sign --key {} --key-id {key_id} --audience {} --partner local-express --order ORDER_ID --report-id delivered-1 --status DELIVERED --request-json | grpcurl -plaintext -d @ {ingest} waybill.v1.StatusIngest/ReportStatus",
        key_file.display(),
        args.audience
    );
}
