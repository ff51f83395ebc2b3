//! The one trait a partner implements, and what goes in and out of it.

use std::{future::Future, time::Duration};

use waybill_proto::v1::DispatchedOrder;

use crate::status::StatusUpdate;

/// A shipping partner's adapter: turns a Waybill order into a shipment request in the
/// partner's own system.
///
/// The SDK calls [`TransportPartner::request_shipment`] once per order in effect: it records
/// the order id in the durable inbox before the call and the answer after it, so a redelivered
/// order (a Kafka redelivery, a producer duplicate, a resend after the handover deadline) is
/// answered from the inbox and never handed to the adapter again.
///
/// What the adapter must guarantee: **idempotency on the order id**
/// ([`ShipmentContext::idempotency_key`]). There is one window the inbox cannot close — the
/// process dies after the adapter's call reached the partner's system and before its answer
/// was stored, or the call timed out — and then the SDK calls again with the same order id.
/// Pass it to the partner's system as its idempotency key (most carrier APIs take one), or
/// look the order id up before creating a shipment, and answer the same way both times.
///
/// Implement it with `async fn`:
///
/// ```
/// use waybill_connector_sdk::{Acceptance, PartnerError, ShipmentContext, TransportPartner};
/// use waybill_connector_sdk::proto::DispatchedOrder;
///
/// struct Acme;
///
/// impl TransportPartner for Acme {
///     async fn request_shipment(
///         &self,
///         order: &DispatchedOrder,
///         ctx: &ShipmentContext,
///     ) -> Result<Acceptance, PartnerError> {
///         // call the partner's own API with ctx.idempotency_key() here; it answers with
///         // its tracking id, the same for the same key
///         let tracking_id = book_shipment(order, ctx.idempotency_key()).await?;
///         Ok(Acceptance::accepted(tracking_id))
///     }
/// }
/// # async fn book_shipment(_: &DispatchedOrder, key: &str) -> Result<String, PartnerError> {
/// #     Ok(key.to_owned())
/// # }
/// ```
pub trait TransportPartner: Send + Sync + 'static {
    /// Asks the partner's system to carry `order`. Answer [`Acceptance::Accepted`] with the
    /// tracking id, [`Acceptance::Rejected`] when the partner will not carry it (Waybill then
    /// routes the order to the next partner), or an error: [`PartnerError::Retryable`] when
    /// trying again later may succeed (the SDK retries with backoff), [`PartnerError::Permanent`]
    /// when it never will (the order is set aside for a person to look at).
    fn request_shipment(
        &self,
        order: &DispatchedOrder,
        ctx: &ShipmentContext,
    ) -> impl Future<Output = Result<Acceptance, PartnerError>> + Send;
}

/// The partner's answer to a shipment request. Stored in the inbox before it is reported, so a
/// crash between the two re-sends the stored answer instead of asking again.
///
/// An acceptance may carry **later reports** ([`Acceptance::then_report`]): statuses the
/// partner already knows it will report, each after a delay (`SHIPPED` when the courier's
/// next round leaves, say). They are stored in the same inbox transaction as the answer and
/// sent when due, across restarts: a crash after the answer was stored cannot lose them, and a
/// crash before it means the adapter is asked again and answers again. Statuses the partner's
/// system learns of later go through a [`StatusReporter`](crate::status::StatusReporter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acceptance {
    /// The partner will carry the order: reported as `RECEIVED_BY_PARTNER` with the tracking id.
    #[non_exhaustive]
    Accepted {
        /// The partner's tracking id (shown on the order).
        tracking_id: String,
        /// Reports to send later, each when its delay has passed since the answer was stored.
        later: Vec<LaterReport>,
    },
    /// The partner will not carry it: reported as `REJECTED_BY_PARTNER`; Waybill tries the
    /// next matching route.
    Rejected {
        /// Why, in words a person can act on.
        reason: String,
        /// Optional machine-readable reason (`OUT_OF_AREA`, `NO_CAPACITY`,
        /// `UNSUPPORTED_ITEM`): upper-case letters, digits and `_`.
        detail_code: String,
    },
}

impl Acceptance {
    /// Accepted with `tracking_id`.
    pub fn accepted(tracking_id: impl Into<String>) -> Self {
        Self::Accepted {
            tracking_id: tracking_id.into(),
            later: Vec::new(),
        }
    }

    /// Rejected for `reason`, with a detail code such as `OUT_OF_AREA`.
    pub fn rejected(reason: impl Into<String>, detail_code: impl Into<String>) -> Self {
        Self::Rejected {
            reason: reason.into(),
            detail_code: detail_code.into(),
        }
    }

    /// Also reports `update` `after` the answer is stored: durably, stored with the answer in
    /// one inbox transaction, sent when due and retried until StatusIngest confirms it, across
    /// restarts. Call it several times for several reports.
    ///
    /// Defaults: the order's tracking id; `occurred_at` the time the report is due; report id
    /// `<order id>:later:<n>` (`n` counting this acceptance's later reports from 0), the same
    /// whichever instance or retry answers, unless
    /// [`StatusUpdate::with_report_id`](crate::status::StatusUpdate::with_report_id) names one.
    /// An update that breaks StatusIngest's rules (a detail code not in upper case, say) makes
    /// the whole answer a permanent failure: the order is set aside, as if the adapter had
    /// returned [`PartnerError::Permanent`]. On a rejection there is nothing to report later:
    /// the update is left out.
    ///
    /// ```
    /// use std::time::Duration;
    /// use waybill_connector_sdk::{Acceptance, StatusUpdate};
    ///
    /// let answer = Acceptance::accepted("LX-7Q2F9C")
    ///     .then_report(StatusUpdate::shipped(), Duration::from_secs(2 * 3600));
    /// ```
    pub fn then_report(mut self, update: StatusUpdate, after: Duration) -> Self {
        if let Self::Accepted { later, .. } = &mut self {
            later.push(LaterReport { update, after });
        }
        self
    }

    /// The later reports this answer carries (none for a rejection).
    pub fn later(&self) -> &[LaterReport] {
        match self {
            Self::Accepted { later, .. } => later,
            Self::Rejected { .. } => &[],
        }
    }
}

/// A report an [`Acceptance`] schedules: `update`, due `after` the answer is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaterReport {
    /// What to report.
    pub update: StatusUpdate,
    /// How long after the answer is stored.
    pub after: Duration,
}

/// Why the adapter could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartnerError {
    /// Trying again later may succeed (the partner's API is down, rate-limited, timed out).
    /// The SDK retries this order with exponential backoff; other orders keep flowing.
    #[error("retryable: {0}")]
    Retryable(String),
    /// Trying again will not help (the order cannot be expressed in the partner's system).
    /// The order is set aside: a dead-letter record and an inbox row with the reason.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl PartnerError {
    /// Whether the SDK retries the order after this error (with backoff, within the adapter
    /// retries), rather than setting it aside.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable(_))
    }

    /// A [`PartnerError::Retryable`].
    pub fn retryable(reason: impl std::fmt::Display) -> Self {
        Self::Retryable(reason.to_string())
    }

    /// A [`PartnerError::Permanent`].
    pub fn permanent(reason: impl std::fmt::Display) -> Self {
        Self::Permanent(reason.to_string())
    }
}

/// What the adapter knows about the order besides its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipmentContext {
    pub(crate) partner_id: String,
    pub(crate) order_id: String,
    pub(crate) region: String,
    pub(crate) reply_to: String,
    pub(crate) cluster: String,
    pub(crate) traceparent: Option<String>,
    pub(crate) tracestate: Option<String>,
    pub(crate) attempt: u32,
    pub(crate) send_count: i32,
    pub(crate) deadline: Duration,
}

impl ShipmentContext {
    /// The key the partner's system must de-duplicate on: the order id. The same order always
    /// comes with the same key, whichever copy, instance or retry delivers it.
    pub fn idempotency_key(&self) -> &str {
        &self.order_id
    }

    /// The order id (the same as the idempotency key).
    pub fn order_id(&self) -> &str {
        &self.order_id
    }

    /// This connector's partner id.
    pub fn partner_id(&self) -> &str {
        &self.partner_id
    }

    /// The Waybill region that sent the order.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The StatusIngest address the order's reports go to (the SDK sends them there).
    pub fn reply_to(&self) -> &str {
        &self.reply_to
    }

    /// The name of the cluster the order came from (as configured).
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// W3C `traceparent` of this order's journey, continued by the SDK's consumer span: pass
    /// it to the partner's own API so its traces join the order's trace.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// W3C `tracestate`, if the sender had one.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// 1 for the first call for this delivery, higher when the SDK retries after a
    /// [`PartnerError::Retryable`] or a timeout.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How many times Waybill has sent this order (1, or more for resends after the handover
    /// deadline).
    pub fn send_count(&self) -> i32 {
        self.send_count
    }

    /// How long this call may take before the SDK gives up on it and retries.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// A context for calling an adapter directly (an adapter's own tests).
    pub fn for_test(order_id: impl Into<String>) -> Self {
        Self {
            partner_id: "test".to_owned(),
            order_id: order_id.into(),
            region: "test".to_owned(),
            reply_to: "http://127.0.0.1:50053".to_owned(),
            cluster: "test".to_owned(),
            traceparent: None,
            tracestate: None,
            attempt: 1,
            send_count: 1,
            deadline: Duration::from_secs(30),
        }
    }
}
