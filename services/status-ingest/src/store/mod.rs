//! Where reports land: the [`IngestStore`] trait and its one implementation,
//! [`SqlIngestStore`], on Postgres or SQLite; only the statements differ per backend
//! (`postgres.rs`, `sqlite.rs`, `sql/`). The conformance suite (`tests/store_conformance.rs`)
//! runs against both.
//!
//! Reports are written by a group commit (`writer.rs`): [`IngestStore::record_report`] queues
//! the report (a bounded queue: a full one holds the caller back) and waits; one writer takes
//! whatever is queued when it is free — no timer — and records it all in one transaction
//! ([`SqlIngestStore::record_batch`]), commits once, and answers every caller of the batch only
//! after that `COMMIT` returned. A commit that fails answers every caller of the batch
//! `Unavailable` (retryable: a retry with a fresh token is answered `duplicate` if the commit did
//! land after all).
//!
//! Each report of a batch is decided as it would be alone: its order's dispatch row and then the
//! order row locked, the token id taken into the replay guard, an earlier report with the same
//! id looked for, [`crate::domain::decision::decide`] rules, and the decision is carried out —
//! history event, order status and tracking id, dispatch row acknowledged or put back for
//! routing — or undone. On SQLite each report has a `SAVEPOINT` of its own, so one that fails
//! is rolled back alone. On Postgres the batch's head — the reports that share no order, token
//! id or report id (rejections aside) — is recorded in one statement (`postgres/together.rs`;
//! when it is the whole batch, that statement is the transaction), the rest one at a time under
//! a savepoint each (`postgres/one_by_one.rs`); if the head's
//! statement fails, the transaction is rolled back and the whole batch is recorded one at a
//! time, under a savepoint each, so that only the report to blame fails. The Postgres batch never
//! waits for a row lock: a report whose rows another transaction holds (a relay batch recording
//! the order) is left out and its caller records it in a transaction of its own, which waits for
//! the lock as long as it takes, so one busy order cannot hold up the others. Watchers
//! (`WatchOrder`) and the relay are woken at commit: Postgres by one `NOTIFY` per batch naming
//! every order it changed, SQLite through the in-process change feed.
//!
//! `recorded_at` (the history event's time, and the dispatch row's `updated_at`) is read from
//! the store's clock as the report is written, with its rows locked (or, for the head of a
//! Postgres batch, by the statement that locks and writes them): the time the event became true
//! on the writer's side, which the commit makes visible a few milliseconds later at most — not
//! the time the request arrived, before it was verified and queued. One order's events are
//! written under its dispatch row's lock, so in one process their times follow their sequence.

mod postgres;
mod sql;
mod sqlite;
mod writer;

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;
use waybill_proto::v1::OrderStatus;
use waybill_service_kit::{
    clock::{SharedClock, SystemClock},
    db::{Database, Failure, classify},
};

pub use self::sql::{MAX_BATCH, SqlIngestStore};
use crate::domain::decision::Effects;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached in time; retrying later may succeed. (The driver's
    /// error is in the message, so it is not also a `source`: a chain prints it once.)
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// Anything else the database reported.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// A stored value could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The batch the report was in failed as a whole (the cause, shared by every report of
    /// the batch): retrying later may succeed.
    #[error("the report's batch was not committed: {0}")]
    Batch(Arc<StoreError>),
    /// The writer that records reports is gone (it only stops when the store is dropped, so
    /// this is a bug).
    #[error("the report writer has stopped")]
    WriterStopped,
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match classify(&error) {
            Failure::Unavailable | Failure::Conflict => Self::Unavailable(error),
            _ => Self::Database(error),
        }
    }
}

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

/// StatusIngest's view of the database.
#[async_trait]
pub trait IngestStore: Send + Sync + fmt::Debug + 'static {
    /// The key `key_id` enrolled for `partner_id`, revoked or not; `None` if there is none.
    async fn partner_key(
        &self,
        partner_id: &str,
        key_id: &str,
    ) -> Result<Option<EnrolledKey>, StoreError>;

    /// Records `report` (see the module docs): answered once what it did is committed, or
    /// once it was refused.
    async fn record_report(
        &self,
        report: &AuthenticatedReport,
    ) -> Result<ReportOutcome, StoreError>;

    /// Forgets token ids that can no longer be replayed (kept until before `now`); how many.
    async fn purge_token_ids(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
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

/// The store for `db`'s backend, recording times from the system clock.
pub fn for_database(db: &Database) -> Arc<dyn IngestStore> {
    for_database_with_clock(db, Arc::new(SystemClock))
}

/// The store for `db`'s backend, recording times from `clock`.
pub fn for_database_with_clock(db: &Database, clock: SharedClock) -> Arc<dyn IngestStore> {
    Arc::new(SqlIngestStore::new(db, clock))
}
