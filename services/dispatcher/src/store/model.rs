//! The values the store's traits take and give: a lease to take and the rows it took, what
//! recording did, and the claimed batches of history events and audit copies.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::error::StoreError;
use crate::domain::{
    model::{LeasedOrder, UnpublishedEvent},
    record::{AuditCopy, BatchRecord, Fence},
};

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
    pub(super) held: Option<Box<dyn HeldRows>>,
    /// The version of the partners and routes when the rows were leased, read with them
    /// (`None`: not known, so routing reads the tables). A routing table read after the lease
    /// and kept under this version holds every change committed before the lease.
    pub routing_version: Option<i64>,
}

impl Lease {
    /// A lease fenced by the owner and batch id written into its rows (SQLite), or one that
    /// holds nothing: on Postgres its bookkeeping is refused whole.
    pub fn new(fence: Fence, orders: Vec<LeasedOrder>) -> Self {
        Self {
            fence,
            orders,
            held: None,
            routing_version: None,
        }
    }

    /// A lease whose rows `held` keeps locked until it records or is dropped.
    pub(crate) fn held(fence: Fence, orders: Vec<LeasedOrder>, held: Box<dyn HeldRows>) -> Self {
        Self {
            fence,
            orders,
            held: Some(held),
            routing_version: None,
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("fence", &self.fence)
            .field("orders", &self.orders.len())
            .field("held", &self.held.is_some())
            .field("routing_version", &self.routing_version)
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
