//! Where orders live: the [`OrderStore`] trait and its one implementation, [`SqlOrderStore`],
//! on Postgres or SQLite. Rows decode alike on both (`rows.rs`); what differs is only the SQL
//! text (`sql/*.pg.sql`, `sql/*.sqlite.sql`; `sql/*.sql` serve both) and the placing write
//! (`postgres.rs`, `sqlite.rs`). The same conformance suite (`tests/store_conformance.rs`) runs
//! against both.
//!
//! The placing transaction is the heart of the transactional outbox: the order, its lines, its
//! `PLACED` event and its `PENDING` dispatch row are written together or not at all.

mod postgres;
mod rows;
mod sql;
mod sqlite;

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use uuid::Uuid;
use waybill_service_kit::{
    db::{Database, Failure, classify},
    on_pool,
};

pub use self::sql::SqlOrderStore;
use crate::domain::{
    model::{CatalogItem, NewOrder, OrderRecord, StatusEvent},
    page_token::PageCursor,
};

/// The catalog seed used by `waybill dev`/`demo`, benchmarks and tests.
pub const CATALOG_SEED_SQL: &str = include_str!("../../seed/catalog.sql");

/// What `place_order` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A new order was written.
    Created(OrderRecord),
    /// The idempotency key was used before with the same request: nothing was written, this is
    /// the original order as it is now.
    Replayed(OrderRecord),
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The idempotency key belongs to an order placed with a different request.
    #[error("idempotency key {key:?} was already used for a different request (order {order_id})")]
    IdempotencyConflict {
        /// The reused key.
        key: String,
        /// The order that owns it.
        order_id: Uuid,
    },
    /// The database could not be reached in time; retrying later may succeed.
    /// (The driver's error is in the message, so it is not also a `source`: a chain prints it
    /// once.)
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// Anything else the database reported; a bug or a broken schema, not the caller's fault.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// A stored value could not be read back (corrupt or from a newer schema).
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

/// Orders, their lines and status history, and the catalog they are priced from.
#[async_trait]
pub trait OrderStore: Send + Sync + fmt::Debug + 'static {
    /// The catalog entries for `skus` (unknown SKUs are simply absent).
    async fn catalog_items(&self, skus: &[String]) -> Result<Vec<CatalogItem>, StoreError>;

    /// Writes `order` with its lines, `PLACED` event and `PENDING` dispatch row in one
    /// transaction, or recognises a replay of its idempotency key.
    async fn place_order(&self, order: &NewOrder) -> Result<Placement, StoreError>;

    /// One order with lines and history.
    async fn get_order(&self, id: Uuid) -> Result<Option<OrderRecord>, StoreError>;

    /// A customer's orders, newest first, strictly after `after`, at most `limit`.
    async fn list_orders(
        &self,
        customer_id: &str,
        after: Option<PageCursor>,
        limit: u32,
    ) -> Result<Vec<OrderRecord>, StoreError>;

    /// The order's history events with a sequence greater than `after_seq`, oldest first.
    async fn history_after(&self, id: Uuid, after_seq: i64)
    -> Result<Vec<StatusEvent>, StoreError>;
}

/// The store for `db`'s backend.
pub fn for_database(db: &Database) -> Arc<dyn OrderStore> {
    Arc::new(SqlOrderStore::new(db))
}

/// Loads the sample catalog (idempotent).
pub async fn seed_catalog(db: &Database) -> Result<(), StoreError> {
    on_pool!(db.backend(), |pool| {
        sqlx::raw_sql(CATALOG_SEED_SQL)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(())
}

/// The record of a just-created order, built from what was written (no read-back needed).
pub(crate) fn created_record(order: &NewOrder) -> OrderRecord {
    OrderRecord {
        id: order.id,
        customer: order.customer.clone(),
        ship_to: order.ship_to.clone(),
        lines: order.lines.clone(),
        currency_code: order.currency_code.clone(),
        total_minor: order.total_minor,
        region: order.region.clone(),
        tracking_id: None,
        placed_at: order.placed_at,
        history: vec![StatusEvent {
            order_id: order.id,
            seq: 1,
            status: waybill_proto::v1::OrderStatus::Placed,
            partner_id: String::new(),
            detail: String::new(),
            tracking_id: String::new(),
            occurred_at: order.placed_at,
            recorded_at: order.placed_at,
            detail_code: String::new(),
            action_required: false,
            needs_review: false,
        }],
    }
}
