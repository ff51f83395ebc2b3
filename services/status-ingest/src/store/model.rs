//! What the store takes and gives: a partner's enrolled key, an authenticated report, and what
//! recording it did, alone ([`ReportOutcome`]) or in a batch ([`InBatch`]).

use chrono::{DateTime, Utc};
use uuid::Uuid;
use waybill_proto::v1::OrderStatus;

use super::error::StoreError;
use crate::domain::decision::Effects;

/// A partner's enrolled key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolledKey {
    /// The raw 32-byte Ed25519 public key.
    pub public_key: Vec<u8>,
    /// Set once revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// An authenticated report, ready to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedReport {
    /// The order.
    pub order_id: Uuid,
    /// The reporting partner (the token's issuer, equal to the request's).
    pub partner_id: String,
    /// The partner's report id.
    pub report_id: String,
    /// What happened.
    pub status: OrderStatus,
    /// Tracking id; may be empty.
    pub tracking_id: String,
    /// Text for people.
    pub detail: String,
    /// Machine-readable reason; may be empty.
    pub detail_code: String,
    /// Someone must act.
    pub action_required: bool,
    /// The partner's time.
    pub occurred_at: DateTime<Utc>,
    /// The token id (replay guard).
    pub token_id: String,
    /// The key the token was verified with (its `kid`; the partner's key enrolled under it):
    /// the report's transaction checks that it is still enrolled and not revoked.
    pub key_id: String,
    /// Until when the replay guard must remember the token id (its exp plus the skew).
    pub token_id_kept_until: DateTime<Utc>,
}

/// What recording a report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Accepted: the history event at `sequence` and these effects were committed.
    Accepted {
        /// The new event's position in the order's history.
        sequence: i64,
        /// What changed.
        effects: Effects,
        /// If this report is the one that acknowledged the handover (the dispatch row became
        /// `ACKNOWLEDGED` with it): how long after the order was placed, by the services' clock
        /// (`orders.placed_at` to the report's `recorded_at`).
        placed_to_acknowledged: Option<std::time::Duration>,
    },
    /// The report id was accepted before from this partner for this order; nothing changed.
    Duplicate,
    /// The order does not exist or is not routed to this partner; nothing changed.
    NotRouted,
    /// Not routed to this partner yet: a relay batch holds the order right now (SQLite); retry
    /// in a moment. Nothing changed.
    InFlight,
    /// The token id was seen before; nothing changed.
    Replayed,
    /// The partner used this report id for another order; nothing changed.
    ReportIdReused,
    /// The token's key was revoked (at this time; `None`: it is no longer enrolled) after the
    /// token was verified with it; nothing changed.
    KeyRevoked(Option<DateTime<Utc>>),
}

/// What a batch did with one of its reports ([`SqlIngestStore::record_batch`]).
#[derive(Debug)]
pub enum InBatch {
    /// Decided: accepted or a duplicate (its writes are the batch's, committed with it), or
    /// refused (rolled back to its savepoint).
    Decided(ReportOutcome),
    /// It failed alone: rolled back to its savepoint, the rest of the batch went on.
    Failed(StoreError),
    /// Another transaction holds its rows (Postgres): left out of the batch, to be recorded in a
    /// transaction of its own that waits for them.
    LeftOut,
}
