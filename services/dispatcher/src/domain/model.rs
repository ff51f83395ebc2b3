//! The records the relay and the operators work with, independent of storage and wire format.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;
use waybill_proto::v1::DispatchState;

/// Where an order ships to: what routing looks at (plus the lines a partner needs to carry it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShipTo {
    /// First address line.
    pub line1: String,
    /// Second address line (may be empty).
    pub line2: String,
    /// City.
    pub city: String,
    /// State, province or county (may be empty).
    pub region: String,
    /// Postal code.
    pub postal_code: String,
    /// ISO 3166-1 alpha-2.
    pub country_code: String,
}

/// An order under this instance's lease: everything needed to route and produce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedOrder {
    /// The order (and dispatch row) id; the Kafka key.
    pub order_id: Uuid,
    /// The dispatch state when leased (`PENDING`, `RETRYING`, or `SENT` for a resend).
    pub state: DispatchState,
    /// Failed sends so far.
    pub attempts: i32,
    /// Re-sends after a missed handover deadline so far.
    pub resends: i32,
    /// The partner it was sent to (resends only).
    pub partner_id: Option<String>,
    /// Whether the partner has confirmed receipt (resends only: then it is not re-sent).
    pub acknowledged: bool,
    /// When the broker acknowledged the latest send (none before the first).
    pub sent_at: Option<DateTime<Utc>>,
    /// Where the latest send landed on the partner's topic (none before the first, and for
    /// rows sent before the dispatcher kept it).
    pub sent_position: Option<SentPosition>,
    /// Partners that refused the order (`REJECTED_BY_PARTNER`, recorded by StatusIngest in
    /// `dispatch_rejections`): routing skips them.
    pub rejected_partners: Vec<String>,
    /// W3C trace context of the placing request.
    pub traceparent: String,
    /// W3C trace state of the placing request.
    pub tracestate: String,
    /// The order as partners receive it: an encoded `DispatchedOrder` without the per-send
    /// fields (partner, send count, reply-to, region), as Orders stored it in the outbox row.
    pub message: Vec<u8>,
    /// Destination (read from the message, for routing).
    pub ship_to: ShipTo,
    /// ISO 4217 currency of the total (read from the message, for the audit rule).
    pub currency_code: String,
    /// Order total, minor units (read from the message, for the audit rule).
    pub total_minor: i64,
}

/// Where one record landed on a topic: the partition and offset of the broker's delivery report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentPosition {
    /// The partition.
    pub partition: i32,
    /// The record's offset in it.
    pub offset: i64,
}

/// A shipping partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerRecord {
    /// Lower-case letters, digits and '-'.
    pub id: String,
    /// For people.
    pub display_name: String,
    /// Disabled partners match no route.
    pub enabled: bool,
    /// Time the partner has to confirm receipt after a send.
    pub handover_deadline: Duration,
    /// Re-sends before an unconfirmed order is flagged.
    pub resend_budget: i32,
    /// The topic it consumes.
    pub topic: String,
    /// First enrolment.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A routing rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRecord {
    /// Operator-chosen id.
    pub id: String,
    /// The partner it routes to.
    pub partner_id: String,
    /// ISO 3166-1 alpha-2, upper case.
    pub country_code: String,
    /// Empty, or the region that must match (case-insensitive).
    pub region: String,
    /// Empty, or the postal-code prefix that must match.
    pub postal_prefix: String,
    /// Lower wins.
    pub priority: i32,
    /// Disabled routes match nothing.
    pub enabled: bool,
}

/// A partner's signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerKeyRecord {
    /// Owner.
    pub partner_id: String,
    /// Key id, unique per partner.
    pub key_id: String,
    /// Raw 32-byte Ed25519 public key.
    pub public_key: Vec<u8>,
    /// When it was added.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When StatusIngest last accepted a report signed with it (kept at most a minute
    /// behind); `None`: never.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A dispatch row as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchRecord {
    /// The order.
    pub order_id: Uuid,
    /// Relay state.
    pub state: DispatchState,
    /// Failed sends since the last success or operator retry.
    pub attempts: i32,
    /// When it is next due.
    pub next_attempt_at: DateTime<Utc>,
    /// The last failure.
    pub last_error: Option<String>,
    /// The partner it was routed to.
    pub partner_id: Option<String>,
    /// The route that matched.
    pub route_id: Option<String>,
    /// Current lease holder, if any.
    pub lease_owner: Option<String>,
    /// Current lease expiry, if any.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Last (re)send acknowledged by the broker.
    pub sent_at: Option<DateTime<Utc>>,
    /// Re-sends after missed handover deadlines.
    pub resends: i32,
    /// When the partner must have confirmed receipt.
    pub ack_due_at: Option<DateTime<Utc>>,
    /// When the row was written (the order was placed).
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Order currency.
    pub currency_code: String,
    /// Order total, minor units.
    pub total_minor: i64,
}

/// One entry of the attempt log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// Attempt number (1 for the first send).
    pub attempt: i32,
    /// When it ended.
    pub at: DateTime<Utc>,
    /// Empty for a success.
    pub error: String,
    /// Partner it was for (empty when unroutable).
    pub partner_id: String,
    /// Topic it went to (empty when unroutable).
    pub topic: String,
}

/// Which dispatch rows an operator means.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispatchFilter {
    /// `None` matches every state.
    pub state: Option<DispatchState>,
    /// `None` matches every partner.
    pub partner_id: Option<String>,
}

/// A status-history event not yet published to the order-events topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpublishedEvent {
    /// The order.
    pub order_id: Uuid,
    /// Position in the order's history.
    pub seq: i64,
    /// Short status name (`PLACED`, …).
    pub status: String,
    /// Partner involved (may be empty).
    pub partner_id: String,
    /// Free text.
    pub detail: String,
    /// Tracking id (may be empty).
    pub tracking_id: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// Partner reports: a machine-readable reason (may be empty).
    pub detail_code: String,
    /// Partner reports: someone must act.
    pub action_required: bool,
    /// Recorded after the order's final state: kept for operators, changed nothing.
    pub needs_review: bool,
    /// The order's customer id.
    pub customer_id: String,
    /// The order's customer e-mail.
    pub customer_email: String,
    /// The order's region.
    pub region: String,
}

/// Counts by state and the age of the oldest due row: the backlog operators watch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backlog {
    /// `(state, rows)` for every state that has rows.
    pub by_state: Vec<(DispatchState, i64)>,
    /// When the oldest row that is due now became due.
    pub oldest_due_at: Option<DateTime<Utc>>,
    /// Audit copies waiting in the audit outbox.
    pub audit_pending: i64,
    /// When the next history event to publish was recorded (none waiting: `None`).
    pub oldest_unpublished_at: Option<DateTime<Utc>>,
    /// For each partner with orders sent and not confirmed (`SENT`): when the oldest of them
    /// was last sent.
    pub oldest_unconfirmed_by_partner: Vec<(String, DateTime<Utc>)>,
}
