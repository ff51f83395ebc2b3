//! `local-express`: a local courier that accepts every order at once with a tracking id and
//! reports it `SHIPPED` a little later.
//!
//! Run it (after enrolling `local-express`, its route and its key with Waybill):
//!
//! ```text
//! WAYBILL_KAFKA_BROKERS=127.0.0.1:9092 WAYBILL_PARTNER_KEY_FILE=local-express-2026.pem \
//! WAYBILL_PARTNER_KEY_ID=local-express-2026 cargo run -p waybill-connector-sdk --example local-express
//! ```
//!
//! Settings: the SDK's environment variables (`waybill_connector_sdk::config`), plus
//! `WAYBILL_SHIPPED_AFTER_MS` (default 2000). Sandbox markers in the address's line 2 —
//! `[reject]`, `[fail-N]`, `[timeout]`, `[permanent]`, `[out-of-order]` — trigger each path
//! (`waybill_connector_sdk::sandbox`).

use std::time::Duration;

use waybill_connector_sdk::{
    Acceptance, Connector, ConnectorBuilder, PartnerError, ShipmentContext, StatusReporter,
    StatusUpdate, TransportPartner, proto::DispatchedOrder, sandbox::SandboxMarkers,
};

/// The adapter.
pub struct LocalExpress {
    /// Where later statuses go.
    pub reporter: StatusReporter,
    /// How long after accepting an order it is reported shipped.
    pub shipped_after: Duration,
}

impl TransportPartner for LocalExpress {
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
                "outside our delivery area",
                "OUT_OF_AREA",
            ));
        }
        if ctx.attempt() <= markers.fail_times {
            return Err(PartnerError::retryable("sandbox: dispatch desk busy"));
        }
        if markers.timeout && ctx.attempt() == 1 {
            tokio::time::sleep(ctx.deadline() + Duration::from_secs(1)).await;
        }
        // Idempotent on the order id: the same order always gets the same tracking id.
        let tracking_id = format!("LX-{}", short_id(ctx.idempotency_key(), 12));
        let (reporter, order_id, delay) = (
            self.reporter.clone(),
            order.order_id.clone(),
            self.shipped_after,
        );
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // Report ids from the order id: reporting twice is a duplicate, not two events.
            let shipped = StatusUpdate::shipped().with_report_id(format!("{order_id}:shipped"));
            let delivered =
                StatusUpdate::delivered().with_report_id(format!("{order_id}:delivered"));
            let updates = if markers.out_of_order {
                vec![delivered, shipped]
            } else {
                vec![shipped]
            };
            for update in updates {
                if let Err(error) = reporter.report(&order_id, update).await {
                    tracing::warn!(%order_id, %error, "cannot report");
                }
            }
        });
        Ok(Acceptance::accepted(tracking_id))
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
    let shipped_after = std::env::var("WAYBILL_SHIPPED_AFTER_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_secs(2), Duration::from_millis);
    let connector: Connector = ConnectorBuilder::from_env("local-express")?.build().await?;
    let adapter = LocalExpress {
        reporter: connector.reporter(),
        shipped_after,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    connector.run(adapter, shutdown).await?;
    Ok(())
}
