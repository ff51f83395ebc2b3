//! The SQLite order store (the embedded default). Ids are UUID text, instants INTEGER
//! microseconds. SQLite has one writer at a time: the placing transaction starts with its write
//! so it takes the write lock at once (waiting on the busy timeout) instead of failing on a
//! read-to-write upgrade.

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool, sqlite::SqliteRow};
use uuid::Uuid;
use waybill_service_kit::db::{Change, ChangeFeed, from_unix_micros, to_unix_micros};

use super::{OrderStore, Placement, StoreError, created_record, parse_status};
use crate::domain::{
    model::{Address, CatalogItem, Customer, NewOrder, OrderRecord, PricedLine, StatusEvent},
    page_token::PageCursor,
};

const ORDER_COLUMNS: &str = "id, customer_id, customer_name, customer_email, customer_phone, \
     ship_line1, ship_line2, ship_city, ship_region, ship_postal_code, ship_country_code, \
     currency_code, total_minor, region, partner_id, tracking_id, placed_at";

/// Orders in SQLite.
#[derive(Debug, Clone)]
pub struct SqliteOrderStore {
    pool: SqlitePool,
    feed: ChangeFeed,
}

impl SqliteOrderStore {
    /// A store on `pool` (already migrated); commits are announced on `feed`.
    pub fn new(pool: SqlitePool, feed: ChangeFeed) -> Self {
        Self { pool, feed }
    }

    async fn complete(&self, rows: Vec<SqliteRow>) -> Result<Vec<OrderRecord>, StoreError> {
        let mut orders = rows
            .iter()
            .map(order_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if orders.is_empty() {
            return Ok(orders);
        }
        let ids: Vec<String> = orders.iter().map(|order| order.id.to_string()).collect();

        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT order_id, sku, name, quantity, unit_price_minor, line_total_minor \
             FROM order_lines WHERE order_id IN (",
        );
        push_list(&mut query, &ids);
        query.push(") ORDER BY order_id, line_no");
        let mut lines: HashMap<Uuid, Vec<PricedLine>> = HashMap::new();
        for row in query.build().fetch_all(&self.pool).await? {
            let quantity: i64 = row.try_get("quantity")?;
            lines
                .entry(parse_id(row.try_get("order_id")?)?)
                .or_default()
                .push(PricedLine {
                    sku: row.try_get("sku")?,
                    name: row.try_get("name")?,
                    quantity: u32::try_from(quantity)
                        .map_err(|_| StoreError::Corrupt(format!("bad quantity {quantity}")))?,
                    unit_price_minor: row.try_get("unit_price_minor")?,
                    line_total_minor: row.try_get("line_total_minor")?,
                });
        }

        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT order_id, seq, status, partner_id, detail, tracking_id, occurred_at, recorded_at, \
             detail_code, action_required, needs_review \
             FROM order_status_events WHERE order_id IN (",
        );
        push_list(&mut query, &ids);
        query.push(") ORDER BY order_id, seq");
        let mut history: HashMap<Uuid, Vec<StatusEvent>> = HashMap::new();
        for row in query.build().fetch_all(&self.pool).await? {
            let event = event_from_row(&row)?;
            history.entry(event.order_id).or_default().push(event);
        }

        for order in &mut orders {
            order.lines = lines.remove(&order.id).unwrap_or_default();
            order.history = history.remove(&order.id).unwrap_or_default();
        }
        Ok(orders)
    }
}

fn push_list(query: &mut QueryBuilder<'_, Sqlite>, values: &[String]) {
    let mut separated = query.separated(", ");
    for value in values {
        separated.push_bind(value.clone());
    }
}

#[async_trait]
impl OrderStore for SqliteOrderStore {
    async fn catalog_items(&self, skus: &[String]) -> Result<Vec<CatalogItem>, StoreError> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT sku, name, unit_price_minor, currency_code, active FROM catalog_items WHERE sku IN (",
        );
        push_list(&mut query, skus);
        query.push(")");
        query
            .build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok(CatalogItem {
                    sku: row.try_get("sku")?,
                    name: row.try_get("name")?,
                    unit_price_minor: row.try_get("unit_price_minor")?,
                    currency_code: row.try_get("currency_code")?,
                    active: row.try_get("active")?,
                })
            })
            .collect()
    }

    async fn place_order(&self, order: &NewOrder) -> Result<Placement, StoreError> {
        let id = order.id.to_string();
        let placed_at = to_unix_micros(order.placed_at);
        let mut tx = self.pool.begin().await?;
        // First statement writes, so the write lock is taken up front.
        let inserted = sqlx::query(
            "INSERT INTO orders (id, idempotency_key, request_hash, customer_id, customer_name, \
             customer_email, customer_phone, ship_line1, ship_line2, ship_city, ship_region, \
             ship_postal_code, ship_country_code, currency_code, total_minor, region, status, \
             status_seq, placed_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'PLACED', 1, ?) \
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(&id)
        .bind(&order.idempotency_key)
        .bind(&order.request_hash)
        .bind(&order.customer.id)
        .bind(&order.customer.name)
        .bind(&order.customer.email)
        .bind(&order.customer.phone)
        .bind(&order.ship_to.line1)
        .bind(&order.ship_to.line2)
        .bind(&order.ship_to.city)
        .bind(&order.ship_to.region)
        .bind(&order.ship_to.postal_code)
        .bind(&order.ship_to.country_code)
        .bind(&order.currency_code)
        .bind(order.total_minor)
        .bind(&order.region)
        .bind(placed_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();

        if inserted == 0 {
            let existing =
                sqlx::query("SELECT id, request_hash FROM orders WHERE idempotency_key = ?")
                    .bind(&order.idempotency_key)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.rollback().await?;
            let existing_id = parse_id(existing.try_get("id")?)?;
            let existing_hash: Vec<u8> = existing.try_get("request_hash")?;
            if existing_hash != order.request_hash {
                return Err(StoreError::IdempotencyConflict {
                    key: order.idempotency_key.clone(),
                    order_id: existing_id,
                });
            }
            let record = self.get_order(existing_id).await?.ok_or_else(|| {
                StoreError::Corrupt(format!("order {existing_id} vanished while replaying"))
            })?;
            return Ok(Placement::Replayed(record));
        }

        let mut lines = QueryBuilder::<Sqlite>::new(
            "INSERT INTO order_lines (order_id, line_no, sku, name, quantity, unit_price_minor, line_total_minor) ",
        );
        lines.push_values((1_i64..).zip(&order.lines), |mut row, (line_no, line)| {
            row.push_bind(&id)
                .push_bind(line_no)
                .push_bind(&line.sku)
                .push_bind(&line.name)
                .push_bind(i64::from(line.quantity))
                .push_bind(line.unit_price_minor)
                .push_bind(line.line_total_minor);
        });
        lines.build().execute(&mut *tx).await?;

        sqlx::query(
            "INSERT INTO order_status_events (order_id, seq, status, occurred_at, recorded_at) \
             VALUES (?, 1, 'PLACED', ?, ?)",
        )
        .bind(&id)
        .bind(placed_at)
        .bind(placed_at)
        .execute(&mut *tx)
        .await?;

        sqlx::query(
            "INSERT INTO dispatch (order_id, state, next_attempt_at, traceparent, tracestate, \
             created_at, updated_at) VALUES (?, 'PENDING', ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(placed_at)
        .bind(&order.traceparent)
        .bind(&order.tracestate)
        .bind(placed_at)
        .bind(placed_at)
        .execute(&mut *tx)
        .await?;

        tx.commit().await?;
        self.feed.publish(Change::Outbox);
        Ok(Placement::Created(created_record(order)))
    }

    async fn get_order(&self, id: Uuid) -> Result<Option<OrderRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(self.complete(row.into_iter().collect()).await?.pop())
    }

    async fn list_orders(
        &self,
        customer_id: &str,
        after: Option<PageCursor>,
        limit: u32,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let rows = match after {
            None => {
                sqlx::query(&format!(
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE customer_id = ? \
                     ORDER BY placed_at DESC, id DESC LIMIT ?"
                ))
                .bind(customer_id)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            Some(cursor) => {
                sqlx::query(&format!(
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE customer_id = ? \
                     AND (placed_at, id) < (?, ?) ORDER BY placed_at DESC, id DESC LIMIT ?"
                ))
                .bind(customer_id)
                .bind(to_unix_micros(cursor.placed_at))
                .bind(cursor.id.to_string())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
        };
        self.complete(rows).await
    }

    async fn history_after(
        &self,
        id: Uuid,
        after_seq: i64,
    ) -> Result<Vec<StatusEvent>, StoreError> {
        sqlx::query(
            "SELECT order_id, seq, status, partner_id, detail, tracking_id, occurred_at, recorded_at, \
             detail_code, action_required, needs_review \
             FROM order_status_events WHERE order_id = ? AND seq > ? ORDER BY seq",
        )
        .bind(id.to_string())
        .bind(after_seq)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(event_from_row)
        .collect()
    }
}

fn parse_id(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|_| StoreError::Corrupt(format!("bad uuid {text:?}")))
}

fn order_from_row(row: &SqliteRow) -> Result<OrderRecord, StoreError> {
    Ok(OrderRecord {
        id: parse_id(row.try_get("id")?)?,
        customer: Customer {
            id: row.try_get("customer_id")?,
            name: row.try_get("customer_name")?,
            email: row.try_get("customer_email")?,
            phone: row.try_get("customer_phone")?,
        },
        ship_to: Address {
            line1: row.try_get("ship_line1")?,
            line2: row.try_get("ship_line2")?,
            city: row.try_get("ship_city")?,
            region: row.try_get("ship_region")?,
            postal_code: row.try_get("ship_postal_code")?,
            country_code: row.try_get("ship_country_code")?,
        },
        lines: Vec::new(),
        currency_code: row.try_get("currency_code")?,
        total_minor: row.try_get("total_minor")?,
        region: row.try_get("region")?,
        partner_id: row.try_get("partner_id")?,
        tracking_id: row.try_get("tracking_id")?,
        placed_at: from_unix_micros(row.try_get("placed_at")?),
        history: Vec::new(),
    })
}

fn event_from_row(row: &SqliteRow) -> Result<StatusEvent, StoreError> {
    Ok(StatusEvent {
        order_id: parse_id(row.try_get("order_id")?)?,
        seq: row.try_get("seq")?,
        status: parse_status(row.try_get("status")?)?,
        partner_id: row.try_get("partner_id")?,
        detail: row.try_get("detail")?,
        tracking_id: row.try_get("tracking_id")?,
        occurred_at: from_unix_micros(row.try_get("occurred_at")?),
        detail_code: row.try_get("detail_code")?,
        action_required: row.try_get("action_required")?,
        needs_review: row.try_get("needs_review")?,
        recorded_at: from_unix_micros(row.try_get("recorded_at")?),
    })
}
