//! Where the relay's state lives: the [`DispatchStore`] trait and its one implementation,
//! [`SqlDispatchStore`], on Postgres or SQLite. Rows decode alike on both (`rows.rs`); what
//! differs is only the SQL text (`sql/*.pg.sql`, `sql/*.sqlite.sql`; `sql/*.sql` serve both)
//! and the steps that move whole batches (`postgres.rs`: arrays and row locks; `sqlite.rs`:
//! JSON arrays and the single writer). The conformance suite (`tests/store_conformance.rs`)
//! runs against both.
//!
//! The relay's writes are fenced, so an instance whose lease was lost cannot record an outcome
//! over the next holder's. How a lease holds its rows differs by backend ([`Lease`]):
//! - **Postgres**: the rows stay locked (`FOR UPDATE SKIP LOCKED`) by one transaction from the
//!   lease to the commit of its bookkeeping; nothing is written to lease them. The fence is that
//!   transaction: a crashed instance's rows are free the moment its connection drops, and a
//!   stalled one's when the server ends its transaction after `--lease` of idleness.
//! - **SQLite** (one writer, which a transaction held across a produce would block): the lease
//!   writes its owner, batch id and expiry into the rows, and every bookkeeping statement is
//!   conditional on them.
//!
//! Every bookkeeping step is one statement per kind of change for the whole batch, inside one
//! transaction.

mod legacy;
mod pg_events;
mod postgres;
mod rows;
mod sql;
mod sqlite;

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;
use waybill_proto::v1::{DispatchState, OrderStatus};
use waybill_service_kit::db::{Database, Failure, classify};

pub use self::sql::SqlDispatchStore;
/// What the relay decided for a batch, recorded here (defined with the decisions).
pub use crate::domain::record::{AttemptLog, AuditCopy, BatchRecord, Fence, RowUpdate};
use crate::domain::{
    model::{
        AttemptRecord, Backlog, DispatchFilter, DispatchRecord, LeasedOrder, PartnerKeyRecord,
        PartnerRecord, RouteRecord, ShipTo, UnpublishedEvent,
    },
    routing::RoutingTable,
};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key already exists.
    #[error("already exists")]
    Duplicate,
    /// A referenced row (a partner) does not exist.
    #[error("referenced row missing")]
    MissingReference,
    /// A value broke a table's CHECK rule.
    #[error("value rejected by the schema")]
    CheckViolation,
    /// The database could not be reached in time; retrying later may succeed.
    /// (The driver's error is in the message, so it is not also a `source`: a chain prints it
    /// once.)
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// Anything else the database reported.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// A stored value could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Database(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match classify(&error) {
            Failure::Duplicate => Self::Duplicate,
            Failure::MissingReference => Self::MissingReference,
            Failure::CheckViolation => Self::CheckViolation,
            Failure::Unavailable | Failure::Conflict => Self::Unavailable(error),
            Failure::Other => Self::Database(error),
        }
    }
}

/// A lease to take: which owner and batch, until when, how many rows.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// This instance.
    pub owner: String,
    /// Fresh per batch.
    pub batch_id: Uuid,
    /// The clock's now: due rows are those due at or before it.
    pub now: DateTime<Utc>,
    /// Lease expiry.
    pub expires_at: DateTime<Utc>,
    /// Most rows.
    pub limit: u32,
}

/// The rows one lease took, and what fences their bookkeeping.
pub struct Lease {
    /// The owner and batch id the lease was taken under (SQLite's fence; on Postgres for logs).
    pub fence: Fence,
    /// The orders, oldest due first.
    pub orders: Vec<LeasedOrder>,
    /// Postgres: the transaction that holds the rows' locks; the outcome is recorded through it.
    held: Option<Box<dyn HeldRows>>,
}

impl Lease {
    /// A lease fenced by the owner and batch id written into its rows (SQLite), or one that
    /// holds nothing: on Postgres its bookkeeping is refused whole.
    pub fn new(fence: Fence, orders: Vec<LeasedOrder>) -> Self {
        Self {
            fence,
            orders,
            held: None,
        }
    }

    /// A lease whose rows `held` keeps locked until it records or is dropped.
    pub(crate) fn held(fence: Fence, orders: Vec<LeasedOrder>, held: Box<dyn HeldRows>) -> Self {
        Self {
            fence,
            orders,
            held: Some(held),
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("fence", &self.fence)
            .field("orders", &self.orders.len())
            .field("held", &self.held.is_some())
            .finish()
    }
}

/// Rows a Postgres lease keeps locked in its open transaction.
#[async_trait]
pub(crate) trait HeldRows: Send + Sync {
    /// Records `batch` in the transaction that holds the rows, and commits.
    async fn record(
        self: Box<Self>,
        batch: &BatchRecord,
        now: DateTime<Utc>,
    ) -> Result<RecordReport, StoreError>;
    /// Rolls back, so the rows are due again at once.
    async fn release(self: Box<Self>) -> Result<(), StoreError>;
}

/// Audit copies claimed for producing; dropping the batch without [`AuditBatch::settle`]
/// leaves them as they were (they are tried again later).
#[async_trait]
pub trait AuditBatch: Send {
    /// The copies, oldest due first.
    fn copies(&self) -> &[AuditCopy];
    /// Removes the delivered copies and stores the new attempt count, error and due time of
    /// the failed ones (`failed` holds their updated values).
    async fn settle(
        self: Box<Self>,
        delivered: &[Uuid],
        failed: &[AuditCopy],
    ) -> Result<(), StoreError>;
}

/// What one round of the retention job removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// Attempt-log entries deleted.
    pub attempts: u64,
    /// Stored messages cleared (acknowledged dispatches; a later re-send builds its message
    /// from the order tables again).
    pub messages: u64,
}

/// What recording did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordReport {
    /// Rows updated (still under this lease).
    pub applied: Vec<Uuid>,
    /// Rows refused by the fence (the lease was lost).
    pub fenced: Vec<Uuid>,
    /// Orders that got a `SENT_TO_PARTNER` event.
    pub events_appended: Vec<Uuid>,
}

/// A batch of history events to publish; dropping it without [`EventBatch::mark_published`]
/// leaves them unpublished (they are published again later: at-least-once).
#[async_trait]
pub trait EventBatch: Send {
    /// The events, oldest first.
    fn events(&self) -> &[UnpublishedEvent];
    /// Records that they are on the order-events topic.
    async fn mark_published(self: Box<Self>, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Whether committed events wait that this batch did not take (Postgres): held back by an
    /// older transaction still running, or beyond a walk that filled the batch.
    fn more_waiting(&self) -> bool {
        false
    }
    /// Reads up to `limit` events after the last ones this batch walked, under the same claim
    /// (Postgres; elsewhere there are none), so the relay reads the next events while it
    /// produces these. [`EventBatch::mark_published`] covers every walk unless
    /// [`EventBatch::keep_walks`] drops the later ones.
    async fn walk_more(&mut self, _limit: u32) -> Result<Vec<UnpublishedEvent>, StoreError> {
        Ok(Vec::new())
    }
    /// Keeps only the first `walks` walks of [`EventBatch::walk_more`] (the later ones' events
    /// were not produced): publishing marks the claim's own events and those, and the rest are
    /// walked again by a later batch.
    fn keep_walks(&mut self, _walks: usize) {}
    /// Gives the events back unpublished at once. Dropping the batch does the same, but on
    /// Postgres only when its connection is next used, so other instances skip the events
    /// until then.
    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The outbox relay's and the operators' view of the database.
#[async_trait]
pub trait DispatchStore: Send + Sync + fmt::Debug + 'static {
    /// Leases due rows (`PENDING`, or `RETRYING` due by `now`, not under a live lease).
    async fn lease_due(&self, lease: &LeaseRequest) -> Result<Lease, StoreError>;
    /// Leases `SENT` rows whose handover deadline has passed.
    async fn lease_overdue(&self, lease: &LeaseRequest) -> Result<Lease, StoreError>;
    /// Records a batch's outcome in one transaction, fenced by `lease`, and ends the lease.
    async fn record(
        &self,
        lease: Lease,
        batch: &BatchRecord,
        now: DateTime<Utc>,
    ) -> Result<RecordReport, StoreError>;
    /// Gives a lease's rows back unrecorded, due again at once. (Dropping a Postgres lease does
    /// the same as its connection returns to the pool.)
    async fn release(&self, lease: Lease) -> Result<(), StoreError>;
    /// Gives up every lease `owner` wrote into rows (SQLite; at shutdown), so another instance
    /// takes them at once. (A Postgres lease ends with its transaction.)
    async fn release_leases(&self, owner: &str, now: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Status-history events not yet on the order-events topic, oldest first.
    async fn claim_events(&self, limit: u32) -> Result<Box<dyn EventBatch>, StoreError>;
    /// Audit copies due by `now` (at most `limit`), claimed so no other instance produces them
    /// at the same time.
    async fn claim_audits(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Box<dyn AuditBatch>, StoreError>;
    /// Removes, at most `limit` of each, what operators no longer need from before `before`
    /// (the retention job): attempt-log entries, and the stored message of dispatches their
    /// partner acknowledged, sent before then.
    async fn clean_up(&self, before: DateTime<Utc>, limit: u32) -> Result<Cleaned, StoreError>;
    /// Counts by state and the oldest due row.
    async fn backlog(&self, now: DateTime<Utc>) -> Result<Backlog, StoreError>;

    /// Partners and routes as they are now.
    async fn routing_table(&self) -> Result<RoutingTable, StoreError>;
    /// Every partner, by id.
    async fn list_partners(&self) -> Result<Vec<PartnerRecord>, StoreError>;
    /// Creates or updates a partner (its `created_at` is kept on update).
    async fn upsert_partner(&self, partner: &PartnerRecord) -> Result<PartnerRecord, StoreError>;
    /// Disables a partner; `None` if unknown.
    async fn disable_partner(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PartnerRecord>, StoreError>;
    /// Adds a key ([`StoreError::Duplicate`] if the id is taken, [`StoreError::MissingReference`]
    /// if the partner is unknown).
    async fn add_key(&self, key: &PartnerKeyRecord) -> Result<PartnerKeyRecord, StoreError>;
    /// Revokes a key (keeps the first revocation time); `None` if unknown.
    async fn revoke_key(
        &self,
        partner_id: &str,
        key_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PartnerKeyRecord>, StoreError>;
    /// A partner's keys.
    async fn list_keys(&self, partner_id: &str) -> Result<Vec<PartnerKeyRecord>, StoreError>;
    /// Every route, by id.
    async fn list_routes(&self) -> Result<Vec<RouteRecord>, StoreError>;
    /// Creates or replaces a route ([`StoreError::MissingReference`] if the partner is unknown).
    async fn set_route(
        &self,
        route: &RouteRecord,
        now: DateTime<Utc>,
    ) -> Result<RouteRecord, StoreError>;
    /// Deletes a route; whether it existed.
    async fn delete_route(&self, id: &str) -> Result<bool, StoreError>;
    /// An order's destination; `None` if unknown.
    async fn order_destination(&self, order_id: Uuid) -> Result<Option<ShipTo>, StoreError>;

    /// Dispatch rows matching `filter` with ids after `after`, by id, at most `limit`.
    async fn list_dispatches(
        &self,
        filter: &DispatchFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<DispatchRecord>, StoreError>;
    /// One dispatch row and its latest attempts (most recent first).
    async fn get_dispatch(
        &self,
        order_id: Uuid,
    ) -> Result<Option<(DispatchRecord, Vec<AttemptRecord>)>, StoreError>;
    /// Sends rows back to `PENDING` with a fresh budget: the named ones, or (with `ids` empty)
    /// every one matching `filter`; only rows in a retryable state (`RETRYING`, `DEAD`,
    /// `UNROUTABLE`, `UNACKNOWLEDGED`) and not under a live lease. Returns the ids changed.
    async fn retry(
        &self,
        ids: &[Uuid],
        filter: &DispatchFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, StoreError>;
}

/// States an operator may send back to `PENDING`.
pub const RETRYABLE_STATES: [DispatchState; 4] = [
    DispatchState::Retrying,
    DispatchState::Dead,
    DispatchState::Unroutable,
    DispatchState::Unacknowledged,
];

/// Order statuses that show the partner has the order: the one list, bound into the statements
/// that look for a confirmation of receipt.
pub(crate) const ACKNOWLEDGING_STATUSES: [OrderStatus; 4] = [
    OrderStatus::ReceivedByPartner,
    OrderStatus::Shipped,
    OrderStatus::Delivered,
    OrderStatus::Exception,
];

/// The store for `db`'s backend.
pub fn for_database(db: &Database) -> Arc<dyn DispatchStore> {
    Arc::new(SqlDispatchStore::new(db))
}

/// Headers as stored in the audit outbox (a JSON array of `[name, value]`).
pub(crate) fn headers_to_json(headers: &[(String, String)]) -> String {
    serde_json::to_string(headers).unwrap_or_else(|_| "[]".to_owned())
}
