//! The one [`OrderStore`]: every statement whose Rust is the same on both backends is here,
//! written once with [`on_pool!`]; the placing write goes to `postgres.rs` (one statement) or
//! `sqlite.rs` (one transaction under the single writer).

use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;
use waybill_service_kit::{
    db::{Backend, ChangeFeed, Database, Id, IdList, Instant, Statement, TextList, lines_of},
    on_pool,
};

use super::{
    error::StoreError,
    postgres,
    rows::{CatalogRow, EventRow, KeyOwnerRow, OrderRow, assemble},
    sqlite,
    traits::{OrderStore, Placement},
};
use crate::domain::{
    model::{CatalogItem, NewOrder, OrderRecord, StatusEvent},
    page_token::PageCursor,
};

pub(super) const CATALOG_ITEMS: Statement = Statement {
    postgres: "SELECT sku, name, unit_price_minor, currency_code, active FROM catalog_items \
               WHERE sku = ANY($1)",
    sqlite: "SELECT sku, name, unit_price_minor, currency_code, active FROM catalog_items \
             WHERE sku IN (SELECT value FROM json_each($1))",
};
const HISTORIES: Statement = Statement {
    postgres: "SELECT order_id, seq, status, partner_id, detail, tracking_id, occurred_at, \
               recorded_at, detail_code, action_required, needs_review \
               FROM order_status_events WHERE order_id = ANY($1) ORDER BY order_id, seq",
    sqlite: "SELECT order_id, seq, status, partner_id, detail, tracking_id, occurred_at, \
             recorded_at, detail_code, action_required, needs_review \
             FROM order_status_events WHERE order_id IN (SELECT value FROM json_each($1)) \
             ORDER BY order_id, seq",
};
const HISTORY_AFTER: &str = "SELECT order_id, seq, status, partner_id, detail, tracking_id, \
                             occurred_at, recorded_at, detail_code, action_required, \
                             needs_review FROM order_status_events \
                             WHERE order_id = $1 AND seq > $2 ORDER BY seq";
/// Starts a read of orders with their histories as one snapshot. Every report changes an
/// order's row (status, tracking id) and appends to its history in one transaction; read in two
/// plain statements, a report committing in between would show a history event the row does
/// not reflect yet. Postgres: a repeatable-read, read-only transaction. SQLite: the deferred
/// transaction's first read fixes its snapshot (WAL), so nothing is needed (empty: not sent).
const READ_SNAPSHOT: Statement = Statement {
    postgres: "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    sqlite: "",
};
const KEY_OWNER: &str = "SELECT id, request_hash FROM orders WHERE idempotency_key = $1";
const GET_ORDER: &str = include_str!("sql/get_order.sql");
const LIST_ORDERS: &str = include_str!("sql/list_orders.sql");
const LIST_ORDERS_AFTER: &str = include_str!("sql/list_orders_after.sql");

/// Orders in the services' database, Postgres or SQLite.
#[derive(Debug, Clone)]
pub struct SqlOrderStore {
    db: Backend,
    /// Commits announced in this process (SQLite has no `NOTIFY`; on Postgres the placing
    /// statement `NOTIFY`s itself).
    feed: ChangeFeed,
    /// Postgres: the placing writer (a group commit, `postgres.rs`).
    placer: Arc<postgres::Placer>,
}

impl SqlOrderStore {
    /// A store on `db` (already migrated).
    pub fn new(db: &Database) -> Self {
        Self {
            db: db.backend().clone(),
            feed: db.feed().clone(),
            placer: Arc::new(postgres::Placer::new(postgres::WRITE_LIMIT)),
        }
    }

    /// Gives up a placing statement on Postgres after `limit` instead of
    /// [`WRITE_LIMIT`](crate::store::WRITE_LIMIT) (its callers are answered unavailable).
    #[must_use]
    pub fn with_write_limit(mut self, limit: std::time::Duration) -> Self {
        self.placer = Arc::new(postgres::Placer::new(limit));
        self
    }

    /// Joins `orders` and their `events` with their lines (which never change once placed, so
    /// they need not be read in the same snapshot).
    async fn with_lines(
        &self,
        orders: Vec<OrderRow>,
        events: Vec<EventRow>,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let ids: Vec<Uuid> = orders.iter().map(OrderRow::id).collect();
        let lines = lines_of(&self.db, &ids).await?;
        assemble(orders, lines, events)
    }
}

#[async_trait]
impl OrderStore for SqlOrderStore {
    async fn catalog_items(&self, skus: &[String]) -> Result<Vec<CatalogItem>, StoreError> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let skus: TextList = skus.iter().map(String::as_str).collect();
        let rows: Vec<CatalogRow> = on_pool!(&self.db, CATALOG_ITEMS, |pool, sql| {
            sqlx::query_as(sql).bind(&skus).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn place_order(&self, order: &NewOrder) -> Result<Placement, StoreError> {
        let inserted = match &self.db {
            Backend::Postgres(pool) => self.placer.place(pool, order).await?,
            Backend::Sqlite(pool) => sqlite::place_order(pool, &self.feed, order).await?,
        };
        if inserted {
            return Ok(Placement::Created(created_record(order)));
        }
        // The key exists (a concurrent first call has committed by now: the insert waited).
        let owner: KeyOwnerRow = on_pool!(&self.db, |pool| {
            sqlx::query_as(KEY_OWNER)
                .bind(&order.idempotency_key)
                .fetch_one(pool)
                .await?
        });
        let existing_id = Uuid::from(owner.id);
        if owner.request_hash != order.request_hash {
            return Err(StoreError::IdempotencyConflict {
                key: order.idempotency_key.clone(),
                order_id: existing_id,
            });
        }
        let record = self.get_order(existing_id).await?.ok_or_else(|| {
            StoreError::Corrupt(format!("order {existing_id} vanished while replaying"))
        })?;
        Ok(Placement::Replayed(record))
    }

    async fn get_order(&self, id: Uuid) -> Result<Option<OrderRecord>, StoreError> {
        let histories = HISTORIES.text(&self.db);
        let (rows, events) = on_pool!(&self.db, READ_SNAPSHOT, |pool, snapshot| {
            let mut tx = waybill_service_kit::db::begin(pool).await?;
            if !snapshot.is_empty() {
                sqlx::query(snapshot).execute(&mut *tx).await?;
            }
            let rows: Vec<OrderRow> = sqlx::query_as(GET_ORDER)
                .bind(Id(id))
                .fetch_all(&mut *tx)
                .await?;
            let events: Vec<EventRow> = sqlx::query_as(histories)
                .bind(IdList(vec![id]))
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            (rows, events)
        });
        Ok(self.with_lines(rows, events).await?.pop())
    }

    async fn list_orders(
        &self,
        customer_id: &str,
        after: Option<PageCursor>,
        limit: u32,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let histories = HISTORIES.text(&self.db);
        let (rows, events) = on_pool!(&self.db, READ_SNAPSHOT, |pool, snapshot| {
            let mut tx = waybill_service_kit::db::begin(pool).await?;
            if !snapshot.is_empty() {
                sqlx::query(snapshot).execute(&mut *tx).await?;
            }
            let rows: Vec<OrderRow> = match &after {
                None => {
                    sqlx::query_as(LIST_ORDERS)
                        .bind(customer_id)
                        .bind(i64::from(limit))
                        .fetch_all(&mut *tx)
                        .await?
                }
                Some(cursor) => {
                    sqlx::query_as(LIST_ORDERS_AFTER)
                        .bind(customer_id)
                        .bind(Instant(cursor.placed_at))
                        .bind(Id(cursor.id))
                        .bind(i64::from(limit))
                        .fetch_all(&mut *tx)
                        .await?
                }
            };
            let ids = IdList(rows.iter().map(OrderRow::id).collect());
            let events: Vec<EventRow> = sqlx::query_as(histories)
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            (rows, events)
        });
        self.with_lines(rows, events).await
    }

    async fn history_after(
        &self,
        id: Uuid,
        after_seq: i64,
    ) -> Result<Vec<StatusEvent>, StoreError> {
        let rows: Vec<EventRow> = on_pool!(&self.db, |pool| {
            sqlx::query_as(HISTORY_AFTER)
                .bind(Id(id))
                .bind(after_seq)
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(StatusEvent::try_from).collect()
    }
}

/// The record of a just-created order, built from what was written (no read-back needed).
fn created_record(order: &NewOrder) -> OrderRecord {
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
