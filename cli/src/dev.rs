//! `waybill dev`: every service built so far, in one process, on embedded storage.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;
use waybill_orders::OrdersDeps;
use waybill_service_kit::{
    db::{Database, PoolSettings},
    grpc::{self, ServerLimits},
};

/// Settings of `waybill dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the Orders service listens.
    #[arg(long, env = "WAYBILL_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Storage; the embedded default keeps everything in `.waybill/` under the current directory.
    #[arg(
        long,
        env = "WAYBILL_DATABASE_URL",
        default_value = "sqlite://.waybill/waybill.db"
    )]
    database_url: String,
    /// Name of this Waybill region.
    #[arg(long, env = "WAYBILL_REGION", default_value = "local")]
    region: String,
}

/// Runs until `shutdown`.
pub async fn run(args: DevArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = grpc::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let db = Database::connect(
        &args.database_url,
        &PoolSettings::default(),
        shutdown.clone(),
    )
    .await?;
    waybill_orders::store::seed_catalog(&db).await?;
    let addr = listener.local_addr()?;
    println!("waybill dev is running (ctrl-c stops it)");
    println!("  storage        {}", args.database_url);
    println!("  orders         grpc://{addr}  (waybill.v1.OrderService, health, reflection)");
    println!("  dispatcher     not built yet: placed orders wait in the outbox as PENDING");
    println!("  status-ingest  not built yet");
    println!();
    println!("try:");
    println!("  grpcurl -plaintext {addr} list");
    println!(
        "  grpcurl -plaintext -d '{{\"idempotency_key\":\"first\",\"customer\":{{\"id\":\"c1\",\"name\":\"Ada\",\"email\":\"ada@example.com\"}},\"shipping_address\":{{\"line1\":\"1 Main St\",\"city\":\"Springfield\",\"country_code\":\"US\"}},\"lines\":[{{\"sku\":\"MUG-001\",\"quantity\":2}}]}}' {addr} waybill.v1.OrderService/PlaceOrder"
    );
    let result = waybill_orders::serve(
        listener,
        OrdersDeps::new(&db, args.region),
        ServerLimits::default(),
        shutdown,
    )
    .await;
    db.close().await;
    Ok(result?)
}
