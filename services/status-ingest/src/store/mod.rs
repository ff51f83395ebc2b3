//! Where reports land: the [`IngestStore`] trait and its one implementation,
//! [`SqlIngestStore`], on Postgres or SQLite; only the report transaction's statements differ
//! per backend (`postgres.rs`, `sqlite.rs`, `sql/`). The conformance suite
//! (`tests/store_conformance.rs`) runs against both.
//!
//! [`IngestStore::record_report`] is one transaction: it locks the order row, takes the token id
//! into the replay guard, looks for an earlier report with the same id, lets
//! [`crate::domain::decision::decide`] rule, and carries the decision out — history event,
//! order status and tracking id, dispatch row acknowledged or put back for routing — or rolls
//! everything back. Watchers (`WatchOrder`) and the relay are woken at commit: Postgres by
//! `NOTIFY` from the transaction, SQLite through the in-process change feed.

mod postgres;
mod sql;
mod sqlite;

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;
use waybill_proto::v1::OrderStatus;
use waybill_service_kit::db::{Database, Failure, classify};

pub use self::sql::SqlIngestStore;
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

    /// Records `report` in one transaction at `now` (see the module docs).
    async fn record_report(
        &self,
        report: &AuthenticatedReport,
        now: DateTime<Utc>,
    ) -> Result<ReportOutcome, StoreError>;

    /// Forgets token ids that can no longer be replayed (kept until before `now`); how many.
    async fn purge_token_ids(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// The store for `db`'s backend.
pub fn for_database(db: &Database) -> Arc<dyn IngestStore> {
    Arc::new(SqlIngestStore::new(db))
}
