//! The two example partners: complete adapters, with the [`sandbox`](crate::sandbox) markers
//! that make them take every path on purpose.
//!
//! `waybill dev` and `waybill demo` run both in-process, `waybill partner <id>` runs one as
//! its own process (the deployment's partner containers), and `connector-sdk/examples/` has
//! each as a standalone program whose `main` is a few lines:
//!
//! - [`LocalExpress`] (`local-express`): acknowledges every order at once with a tracking id
//!   (`LX-…`) and reports it `SHIPPED` a little later ([`LocalExpress::shipped_after`]),
//!   scheduled with its answer ([`Acceptance::then_report`]) so that no crash loses it.
//! - [`DistanceFreight`] (`distance-freight`): acknowledges each order once with a tracking id
//!   (`DF…`); its later statuses would come from elsewhere in its own systems.
//!
//! Both are idempotent on the order id, as every adapter must be: the same order always gets
//! the same tracking id ([`tracking_id`]: a digest of the whole order id, so that orders
//! placed in the same millisecond, whose UUIDv7 ids share their first twelve digits, still
//! get ids of their own).
//!
//! Behind the cargo feature `examples` (the `waybill` binary turns it on): a partner's own
//! build leaves them out.

use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;
use waybill_proto::v1::DispatchedOrder;

use crate::{
    connector::Connector,
    error::ConnectorError,
    partner::{Acceptance, PartnerError, ShipmentContext, TransportPartner},
    sandbox::SandboxMarkers,
    status::StatusUpdate,
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
                let adapter = LocalExpress::new().shipped_after(shipped_after);
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
/// `[reject:local-express]`), `[fail-N]`, `[timeout]`, `[permanent]`, `[out-of-order]`
/// (`DELIVERED` after the delay, `SHIPPED` after twice the delay).
///
/// The `SHIPPED` is a later report of its answer ([`Acceptance::then_report`]), not a timer
/// in memory: it is stored in the inbox with the answer and sent when due, so a process
/// killed in the meantime sends it once it runs again. A partner whose system learns of the
/// shipment later (a scan at the depot) reports it then through a
/// [`StatusReporter`](crate::status::StatusReporter) instead.
#[derive(Debug, Clone)]
pub struct LocalExpress {
    shipped_after: Duration,
}

impl LocalExpress {
    /// Reports `SHIPPED` two seconds after accepting.
    pub fn new() -> Self {
        Self {
            shipped_after: Duration::from_secs(2),
        }
    }

    /// How long after accepting an order it is reported `SHIPPED`.
    pub fn shipped_after(mut self, delay: Duration) -> Self {
        self.shipped_after = delay;
        self
    }
}

impl Default for LocalExpress {
    fn default() -> Self {
        Self::new()
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
        // Idempotent on the order id: the same order always gets the same tracking id, and
        // the same later reports (their ids are the order id's, so a second answer to the
        // same order, after a crash before the first was stored, is a duplicate at worst).
        let accepted = Acceptance::accepted(tracking_id("LX-", ctx.idempotency_key(), 13));
        Ok(if markers.out_of_order {
            accepted
                .then_report(StatusUpdate::delivered(), self.shipped_after)
                .then_report(StatusUpdate::shipped(), self.shipped_after * 2)
        } else {
            accepted.then_report(StatusUpdate::shipped(), self.shipped_after)
        })
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
        Ok(Acceptance::accepted(tracking_id(
            "DF",
            ctx.idempotency_key(),
            16,
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

/// The tracking id of `order_id`: `prefix`, then the first `chars` characters (at most 51)
/// of the SHA-256 of the whole order id in Crockford's base32 (digits and upper-case letters
/// without I, L, O, U: nothing to misread on a label). A pure function of the order id, so
/// every call for the same order — a retry, another instance — gives the same id; and of all
/// of it, so orders placed in the same millisecond (UUIDv7 ids with the same timestamp
/// prefix) get different ones. Thirteen characters are 65 bits: a first collision is expected
/// after some six billion orders.
pub fn tracking_id(prefix: &str, order_id: &str, chars: usize) -> String {
    const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let digest = Sha256::digest(order_id.as_bytes());
    let mut id = String::with_capacity(prefix.len() + chars);
    id.push_str(prefix);
    // Five bits per character, most significant first.
    let (mut bits, mut held) = (0_u32, 0_u32);
    for byte in digest {
        bits = (bits << 8) | u32::from(byte);
        held += 8;
        while held >= 5 {
            if id.len() == prefix.len() + chars {
                return id;
            }
            held -= 5;
            id.push(char::from(CROCKFORD[((bits >> held) & 31) as usize]));
        }
        bits &= (1 << held) - 1;
    }
    id
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
        // The order id's SHA-256 in Crockford's base32, as Python's hashlib gives it too.
        assert_eq!(first, Acceptance::accepted("DFXP739V69KCG076TM"));
        let local = LocalExpress::new();
        let first = local
            .request_shipment(&order, &ctx)
            .await
            .expect("accepted");
        let again = local
            .request_shipment(&order, &ctx)
            .await
            .expect("accepted");
        assert_eq!(first, again);
    }

    #[test]
    fn orders_placed_in_the_same_millisecond_get_tracking_ids_of_their_own() {
        // UUIDv7 ids of one millisecond: the same 48-bit timestamp, the rest random, as the
        // Orders service makes them in a burst.
        let millisecond = uuid::Timestamp::from_unix(uuid::NoContext, 1_764_000_000, 123_000_000);
        let mut seen = std::collections::HashMap::new();
        for n in 0..20_000 {
            let order_id = uuid::Uuid::new_v7(millisecond).to_string();
            assert!(order_id.starts_with("019ab"), "{order_id}");
            for (prefix, chars) in [("LX-", 13), ("DF", 16)] {
                let id = tracking_id(prefix, &order_id, chars);
                assert_eq!(id.len(), prefix.len() + chars, "{id}");
                assert_eq!(id, tracking_id(prefix, &order_id, chars), "a pure function");
                if let Some(other) = seen.insert(id.clone(), order_id.clone()) {
                    panic!("{id} for {order_id} and {other} (order {n})");
                }
            }
        }
        // Characters nobody misreads.
        let id = tracking_id("", "0195f0a4-1111-7000-8000-000000000001", 51);
        assert_eq!(id.len(), 51);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        );
        assert!(!id.contains(['I', 'L', 'O', 'U']), "{id}");
    }

    #[tokio::test]
    async fn local_express_schedules_its_shipped_with_its_answer() {
        let order = DispatchedOrder {
            order_id: "0195f0a4-1111-7000-8000-000000000002".into(),
            ..Default::default()
        };
        let ctx = ShipmentContext::for_test(order.order_id.clone());
        let local = LocalExpress::new().shipped_after(Duration::from_millis(300));
        let answer = local
            .request_shipment(&order, &ctx)
            .await
            .expect("accepted");
        let later = answer.later();
        assert_eq!(later.len(), 1);
        assert_eq!(
            later[0].update.status(),
            crate::status::PartnerStatus::Shipped
        );
        assert_eq!(later[0].after, Duration::from_millis(300));

        // [out-of-order]: DELIVERED first, SHIPPED after it.
        let mut reversed = order.clone();
        reversed.ship_to = Some(waybill_proto::v1::Address {
            line2: "[out-of-order]".into(),
            ..Default::default()
        });
        let answer = local
            .request_shipment(&reversed, &ctx)
            .await
            .expect("accepted");
        let statuses: Vec<_> = answer
            .later()
            .iter()
            .map(|l| (l.update.status().as_str(), l.after.as_millis()))
            .collect();
        assert_eq!(statuses, [("DELIVERED", 300), ("SHIPPED", 600)]);
    }
}
