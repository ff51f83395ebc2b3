//! `local-express`: a local courier that accepts every order at once with a tracking id and
//! reports it `SHIPPED` a little later. The adapter is
//! [`waybill_connector_sdk::examples::LocalExpress`]; this is all a program around it needs.
//!
//! Run it (after enrolling `local-express`, its route and its key with Waybill):
//!
//! ```text
//! WAYBILL_KAFKA_BROKERS=127.0.0.1:9092 WAYBILL_PARTNER_KEY_FILE=local-express-2026.pem \
//! WAYBILL_PARTNER_KEY_ID=local-express-2026 cargo run -p waybill-connector-sdk --features examples --example local-express
//! ```
//!
//! Settings: the SDK's environment variables (`waybill_connector_sdk::config`). Sandbox
//! markers in the address's line 2 trigger each path (`waybill_connector_sdk::sandbox`).

use waybill_connector_sdk::{ConnectorBuilder, examples::LocalExpress};

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env();
    tracing_subscriber::fmt()
        .with_env_filter(filter.unwrap_or_else(|_| "info".into()))
        .init();
    let connector = ConnectorBuilder::from_env("local-express")?.build().await?;
    let adapter = LocalExpress::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    connector.run(adapter, shutdown).await?;
    Ok(())
}
