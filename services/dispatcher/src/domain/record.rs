//! What the relay records for a leased batch, in one fenced transaction: the rows' new values,
//! the attempt log, first sends and audit copies that wait in the audit outbox. Made by the
//! decisions in [`super::cycle`], written by the stores.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;
use waybill_proto::v1::DispatchState;

use crate::domain::model::{LeasedOrder, SentPosition};

/// The fence: bookkeeping applies only to rows still leased by this owner with this batch id.
#[derive(Debug, Clone)]
pub struct Fence {
    /// Lease owner.
    pub owner: String,
    /// Batch id.
    pub batch_id: Uuid,
}

/// The new values of one leased dispatch row, computed from the leased snapshot (which the
/// fence guarantees is still current).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowUpdate {
    /// The row.
    pub order_id: Uuid,
    /// New state.
    pub state: DispatchState,
    /// New failure count.
    pub attempts: i32,
    /// New due time.
    pub next_attempt_at: DateTime<Utc>,
    /// New last error (`None` keeps the old one).
    pub last_error: Option<String>,
    /// Partner routed to (`None` keeps the old one).
    pub partner_id: Option<String>,
    /// Route that matched (`None` keeps the old one).
    pub route_id: Option<String>,
    /// New resend count.
    pub resends: i32,
    /// New sent time (`None` keeps the old one).
    pub sent_at: Option<DateTime<Utc>>,
    /// New handover deadline (`None` clears it).
    pub ack_due_at: Option<DateTime<Utc>>,
    /// Where the latest send landed on the partner's topic: the value written, as leased unless
    /// a send was acknowledged (`None` writes none).
    pub sent_position: Option<SentPosition>,
}

impl RowUpdate {
    /// An update that leaves the row as it was leased, due now (fields are then overridden).
    pub fn keep(order: &LeasedOrder, now: DateTime<Utc>) -> Self {
        Self {
            order_id: order.order_id,
            state: order.state,
            attempts: order.attempts,
            next_attempt_at: now,
            last_error: None,
            partner_id: None,
            route_id: None,
            resends: order.resends,
            sent_at: None,
            ack_due_at: None,
            sent_position: order.sent_position,
        }
    }
}

/// One attempt-log entry to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptLog {
    /// The order.
    pub order_id: Uuid,
    /// Attempt number.
    pub attempt: i32,
    /// Empty on success.
    pub error: String,
    /// Partner (may be empty).
    pub partner_id: String,
    /// Topic (may be empty).
    pub topic: String,
}

impl AttemptLog {
    /// The entry for `order`'s current attempt (sends and re-sends counted together).
    pub fn of(order: &LeasedOrder, error: &str, partner_id: &str, topic: &str) -> Self {
        Self {
            order_id: order.order_id,
            attempt: order
                .attempts
                .saturating_add(order.resends)
                .saturating_add(1),
            error: error.to_owned(),
            partner_id: partner_id.to_owned(),
            topic: topic.to_owned(),
        }
    }
}

/// An audit copy waiting in the audit outbox, ready to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCopy {
    /// The order (the message key).
    pub order_id: Uuid,
    /// The audit topic.
    pub topic: String,
    /// The encoded message.
    pub payload: Vec<u8>,
    /// Header name and value pairs.
    pub headers: Vec<(String, String)>,
    /// Failed tries so far.
    pub attempts: i32,
    /// The latest failure.
    pub last_error: String,
    /// When to try again.
    pub due_at: DateTime<Utc>,
}

/// Everything learned from one batch, recorded together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchRecord {
    /// New values of dispatch rows.
    pub updates: Vec<RowUpdate>,
    /// Orders whose first successful send this was: `(order, partner)`; each gets a
    /// `SENT_TO_PARTNER` event (unless its history is already past `PLACED`) and its partner.
    pub first_sends: Vec<(Uuid, String)>,
    /// Attempt-log entries.
    pub attempts: Vec<AttemptLog>,
    /// Audit copies that failed while their partner copy went out: kept in the audit outbox.
    pub audit_copies: Vec<AuditCopy>,
}

impl BatchRecord {
    /// The part of this record that concerns the orders in `ids`.
    pub fn only(&self, ids: &HashSet<Uuid>) -> Self {
        Self {
            updates: self
                .updates
                .iter()
                .filter(|u| ids.contains(&u.order_id))
                .cloned()
                .collect(),
            first_sends: self
                .first_sends
                .iter()
                .filter(|(id, _)| ids.contains(id))
                .cloned()
                .collect(),
            attempts: self
                .attempts
                .iter()
                .filter(|a| ids.contains(&a.order_id))
                .cloned()
                .collect(),
            audit_copies: self
                .audit_copies
                .iter()
                .filter(|c| ids.contains(&c.order_id))
                .cloned()
                .collect(),
        }
    }
}
