//! The two example partners: complete adapters, with the [`sandbox`](crate::sandbox) markers
//! that make them take every path on purpose.
//!
//! `waybill dev` and `waybill demo` run both in-process, `waybill partner <id>` runs one as
//! its own process (the deployment's partner containers), and `connector-sdk/examples/` has
//! each as a standalone program whose `main` is a few lines:
//!
//! - [`LocalExpress`] (`local-express`): acknowledges every order at once with a tracking id
//!   (`LX-…`) and reports it `SHIPPED` a little later ([`LocalExpress::shipped_after`]).
//! - [`DistanceFreight`] (`distance-freight`): acknowledges each order once with a tracking id
//!   (`DF…`); its later statuses would come from elsewhere in its own systems.
//!
//! Both are idempotent on the order id, as every adapter must be: the same order always gets
//! the same tracking id.
//!
//! Behind the cargo feature `examples` (the `waybill` binary turns it on): a partner's own
//! build leaves them out.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use waybill_proto::v1::DispatchedOrder;

use crate::{
    connector::Connector,
    error::ConnectorError,
    partner::{Acceptance, PartnerError, ShipmentContext, TransportPartner},
    sandbox::SandboxMarkers,
    status::{StatusReporter, StatusUpdate},
};

/// The id `local-express` is enrolled under.
pub const LOCAL_EXPRESS: &str = "local-express";
/// The id `distance-freight` is enrolled under.
pub const DISTANCE_FREIGHT: &str = "distance-freight";

/// One of the two example partners, by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExamplePartner {
    /// [`LocalExpress`].
    LocalExpress,
    /// [`DistanceFreight`].
    DistanceFreight,
}

impl ExamplePartner {
    /// Both, in a fixed order.
    pub const ALL: [Self; 2] = [Self::LocalExpress, Self::DistanceFreight];

    /// The partner id it is enrolled under.
    pub fn id(self) -> &'static str {
        match self {
            Self::LocalExpress => LOCAL_EXPRESS,
            Self::DistanceFreight => DISTANCE_FREIGHT,
        }
    }

    /// Its display name.
    pub fn display_name(self) -> &'static str {
        match self {
            Self::LocalExpress => "Local Express (acknowledges at once, reports shipped later)",
            Self::DistanceFreight => "Distance Freight (acknowledges once with a tracking id)",
        }
    }

    /// The example partner with id `id`.
    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.id() == id)
    }

    /// Runs this partner's adapter on `connector` (built for this partner) until `shutdown`;
    /// `shipped_after` is [`LocalExpress::shipped_after`] (ignored by `distance-freight`).
    pub async fn run(
        self,
        connector: Connector,
        shipped_after: Duration,
        shutdown: CancellationToken,
    ) -> Result<(), ConnectorError> {
        match self {
            Self::LocalExpress => {
                let adapter = LocalExpress::new(connector.reporter()).shipped_after(shipped_after);
                connector.run(adapter, shutdown).await
            }
            Self::DistanceFreight => connector.run(DistanceFreight, shutdown).await,
        }
    }
}

impl std::fmt::Display for ExamplePartner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

/// A local courier: accepts every order at once with a tracking id and reports it `SHIPPED`
/// [`shipped_after`](LocalExpress::shipped_after) later. Sandbox: `[reject]` (or
/// `[reject:local-express]`), `[fail-N]`, `[timeout]`, `[permanent]`, `[out-of-order]`.
#[derive(Debug, Clone)]
pub struct LocalExpress {
    reporter: StatusReporter,
    shipped_after: Duration,
}

impl LocalExpress {
    /// Reports later statuses through `reporter` ([`Connector::reporter`]), `SHIPPED` two
    /// seconds after accepting.
    pub fn new(reporter: StatusReporter) -> Self {
        Self {
            reporter,
            shipped_after: Duration::from_secs(2),
        }
    }

    /// How long after accepting an order it is reported `SHIPPED`.
    pub fn shipped_after(mut self, delay: Duration) -> Self {
        self.shipped_after = delay;
        self
    }
}

impl TransportPartner for LocalExpress {
    async fn request_shipment(
        &self,
        order: &DispatchedOrder,
        ctx: &ShipmentContext,
    ) -> Result<Acceptance, PartnerError> {
        let markers = SandboxMarkers::for_partner(order, LOCAL_EXPRESS);
        if let Some(answer) =
            sandbox_path(&markers, ctx, "outside our delivery area", "OUT_OF_AREA").await
        {
            return answer;
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

/// A long-distance carrier: acknowledges each order once with a tracking id. Sandbox:
/// `[reject]` (or `[reject:distance-freight]`), `[fail-N]`, `[timeout]`, `[permanent]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DistanceFreight;

impl TransportPartner for DistanceFreight {
    async fn request_shipment(
        &self,
        order: &DispatchedOrder,
        ctx: &ShipmentContext,
    ) -> Result<Acceptance, PartnerError> {
        let markers = SandboxMarkers::for_partner(order, DISTANCE_FREIGHT);
        if let Some(answer) =
            sandbox_path(&markers, ctx, "no capacity on that lane", "NO_CAPACITY").await
        {
            return answer;
        }
        Ok(Acceptance::accepted(format!(
            "DF{}",
            short_id(ctx.idempotency_key(), 16).to_uppercase()
        )))
    }
}

/// The sandbox paths both examples share: an answer other than "accepted" when a marker asks
/// for one (after sleeping past the deadline for `[timeout]` on the first call).
async fn sandbox_path(
    markers: &SandboxMarkers,
    ctx: &ShipmentContext,
    reject_reason: &str,
    reject_code: &str,
) -> Option<Result<Acceptance, PartnerError>> {
    if markers.permanent {
        return Some(Err(PartnerError::permanent("sandbox: [permanent]")));
    }
    if markers.reject {
        return Some(Ok(Acceptance::rejected(reject_reason, reject_code)));
    }
    if ctx.attempt() <= markers.fail_times {
        return Some(Err(PartnerError::retryable(
            "sandbox: booking system unavailable",
        )));
    }
    if markers.timeout && ctx.attempt() == 1 {
        tokio::time::sleep(ctx.deadline() + Duration::from_secs(1)).await;
    }
    None
}

/// The first `len` letters and digits of the order id.
fn short_id(order_id: &str, len: usize) -> String {
    order_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(len)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partners_by_id() {
        for partner in ExamplePartner::ALL {
            assert_eq!(ExamplePartner::from_id(partner.id()), Some(partner));
        }
        assert_eq!(ExamplePartner::from_id("acme"), None);
    }

    #[tokio::test]
    async fn tracking_ids_depend_only_on_the_order_id() {
        let order = DispatchedOrder {
            order_id: "0195f0a4-1111-7000-8000-000000000001".into(),
            ..Default::default()
        };
        let ctx = ShipmentContext::for_test(order.order_id.clone());
        let first = DistanceFreight
            .request_shipment(&order, &ctx)
            .await
            .expect("accepted");
        let again = DistanceFreight
            .request_shipment(&order, &ctx)
            .await
            .expect("accepted");
        assert_eq!(first, again);
        assert_eq!(first, Acceptance::accepted("DF0195F0A411117000"));
    }
}
