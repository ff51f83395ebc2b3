//! `distance-freight`: a long-distance carrier that acknowledges each order once with a
//! tracking id (its later statuses come from elsewhere in its own systems). The adapter is
//! [`waybill_connector_sdk::examples::DistanceFreight`]; this is all a program around it needs.
//!
//! Run it (after enrolling `distance-freight`, its route and its key with Waybill):
//!
//! ```text
//! WAYBILL_KAFKA_BROKERS=127.0.0.1:9092 WAYBILL_PARTNER_KEY_FILE=distance-freight-2026.pem \
//! WAYBILL_PARTNER_KEY_ID=distance-freight-2026 cargo run -p waybill-connector-sdk --example distance-freight
//! ```
//!
//! Sandbox markers in the address's line 2 trigger each path (`waybill_connector_sdk::sandbox`).

use waybill_connector_sdk::{ConnectorBuilder, examples::DistanceFreight};

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env();
    tracing_subscriber::fmt()
        .with_env_filter(filter.unwrap_or_else(|_| "info".into()))
        .init();
    let connector = ConnectorBuilder::from_env("distance-freight")?
        .build()
        .await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    connector.run(DistanceFreight, shutdown).await?;
    Ok(())
}
