//! `distance-freight`: a long-distance carrier that acknowledges each order once with a
//! tracking id (its later statuses come from elsewhere in its own systems).
//!
//! Run it (after enrolling `distance-freight`, its route and its key with Waybill):
//!
//! ```text
//! WAYBILL_KAFKA_BROKERS=127.0.0.1:9092 WAYBILL_PARTNER_KEY_FILE=distance-freight-2026.pem \
//! WAYBILL_PARTNER_KEY_ID=distance-freight-2026 cargo run -p waybill-connector-sdk --example distance-freight
//! ```
//!
//! Sandbox markers in the address's line 2 — `[reject]`, `[fail-N]`, `[timeout]`,
//! `[permanent]` — trigger each path (`waybill_connector_sdk::sandbox`).

use std::time::Duration;

use waybill_connector_sdk::{
    Acceptance, ConnectorBuilder, PartnerError, ShipmentContext, TransportPartner,
    proto::DispatchedOrder, sandbox::SandboxMarkers,
};

/// The adapter.
pub struct DistanceFreight;

impl TransportPartner for DistanceFreight {
    async fn request_shipment(
        &self,
        order: &DispatchedOrder,
        ctx: &ShipmentContext,
    ) -> Result<Acceptance, PartnerError> {
        let markers = SandboxMarkers::of(order);
        if markers.permanent {
            return Err(PartnerError::permanent("sandbox: [permanent]"));
        }
        if markers.reject {
            return Ok(Acceptance::rejected(
                "no capacity on that lane",
                "NO_CAPACITY",
            ));
        }
        if ctx.attempt() <= markers.fail_times {
            return Err(PartnerError::retryable(
                "sandbox: booking system unavailable",
            ));
        }
        if markers.timeout && ctx.attempt() == 1 {
            tokio::time::sleep(ctx.deadline() + Duration::from_secs(1)).await;
        }
        Ok(Acceptance::accepted(format!(
            "DF{}",
            short_id(ctx.idempotency_key(), 16).to_uppercase()
        )))
    }
}

/// The first `len` letters and digits of the order id.
fn short_id(order_id: &str, len: usize) -> String {
    order_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(len)
        .collect()
}

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
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
