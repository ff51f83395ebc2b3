//! The Postgres order store.

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::{PgPool, Row, postgres::PgRow};
use uuid::Uuid;

use super::{OrderStore, Placement, StoreError, created_record, parse_status};
use crate::domain::{
    model::{Address, CatalogItem, Customer, NewOrder, OrderRecord, PricedLine, StatusEvent},
    page_token::PageCursor,
};

const ORDER_COLUMNS: &str = "id, customer_id, customer_name, customer_email, customer_phone, \
     ship_line1, ship_line2, ship_city, ship_region, ship_postal_code, ship_country_code, \
     currency_code, total_minor, region, partner_id, tracking_id, placed_at";

/// Orders in Postgres.
#[derive(Debug, Clone)]
pub struct PgOrderStore {
    pool: PgPool,
}

impl PgOrderStore {
    /// A store on `pool` (already migrated).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Lines and history of `orders`, two queries for all of them.
    async fn complete(&self, rows: Vec<PgRow>) -> Result<Vec<OrderRecord>, StoreError> {
        let mut orders = rows
            .iter()
            .map(order_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if orders.is_empty() {
            return Ok(orders);
        }
        let ids: Vec<Uuid> = orders.iter().map(|order| order.id).collect();
        let mut lines: HashMap<Uuid, Vec<PricedLine>> = HashMap::new();
        for row in sqlx::query(
            "SELECT order_id, sku, name, quantity, unit_price_minor, line_total_minor \
             FROM order_lines WHERE order_id = ANY($1) ORDER BY order_id, line_no",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?
        {
            let quantity: i32 = row.try_get("quantity")?;
            lines
                .entry(row.try_get("order_id")?)
                .or_default()
                .push(PricedLine {
                    sku: row.try_get("sku")?,
                    name: row.try_get("name")?,
                    quantity: u32::try_from(quantity).map_err(|_| {
                        StoreError::Corrupt(format!("negative quantity {quantity}"))
                    })?,
                    unit_price_minor: row.try_get("unit_price_minor")?,
                    line_total_minor: row.try_get("line_total_minor")?,
                });
        }
        let mut history: HashMap<Uuid, Vec<StatusEvent>> = HashMap::new();
        for row in sqlx::query(
            "SELECT order_id, seq, status, partner_id, detail, tracking_id, occurred_at, recorded_at, \
             detail_code, action_required, needs_review \
             FROM order_status_events WHERE order_id = ANY($1) ORDER BY order_id, seq",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?
        {
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

#[async_trait]
impl OrderStore for PgOrderStore {
    async fn catalog_items(&self, skus: &[String]) -> Result<Vec<CatalogItem>, StoreError> {
        let rows = sqlx::query(
            "SELECT sku, name, unit_price_minor, currency_code, active FROM catalog_items \
             WHERE sku = ANY($1)",
        )
        .bind(skus)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
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
        let count = order.lines.len();
        let (mut line_nos, mut skus, mut names, mut quantities, mut unit_prices, mut totals) = (
            Vec::with_capacity(count),
            Vec::with_capacity(count),
            Vec::with_capacity(count),
            Vec::with_capacity(count),
            Vec::with_capacity(count),
            Vec::with_capacity(count),
        );
        for (line_no, line) in (1_i32..).zip(&order.lines) {
            line_nos.push(line_no);
            skus.push(line.sku.as_str());
            names.push(line.name.as_str());
            // Validation caps quantities at 10,000.
            quantities.push(i32::try_from(line.quantity).unwrap_or(i32::MAX));
            unit_prices.push(line.unit_price_minor);
            totals.push(line.line_total_minor);
        }
        let inserted = sqlx::query(include_str!("place_order.pg.sql"))
            .bind(order.id)
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
            .bind(order.placed_at)
            .bind(&line_nos)
            .bind(&skus)
            .bind(&names)
            .bind(&quantities)
            .bind(&unit_prices)
            .bind(&totals)
            .bind(&order.traceparent)
            .bind(&order.tracestate)
            .fetch_optional(&self.pool)
            .await?;
        if inserted.is_some() {
            return Ok(Placement::Created(created_record(order)));
        }

        // The key exists (a concurrent first call has committed by now: ON CONFLICT waited).
        let existing =
            sqlx::query("SELECT id, request_hash FROM orders WHERE idempotency_key = $1")
                .bind(&order.idempotency_key)
                .fetch_one(&self.pool)
                .await?;
        let existing_id: Uuid = existing.try_get("id")?;
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
        Ok(Placement::Replayed(record))
    }

    async fn get_order(&self, id: Uuid) -> Result<Option<OrderRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"))
            .bind(id)
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
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE customer_id = $1 \
                     ORDER BY placed_at DESC, id DESC LIMIT $2"
                ))
                .bind(customer_id)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            Some(cursor) => {
                sqlx::query(&format!(
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE customer_id = $1 \
                     AND (placed_at, id) < ($2, $3) ORDER BY placed_at DESC, id DESC LIMIT $4"
                ))
                .bind(customer_id)
                .bind(cursor.placed_at)
                .bind(cursor.id)
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
             FROM order_status_events WHERE order_id = $1 AND seq > $2 ORDER BY seq",
        )
        .bind(id)
        .bind(after_seq)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(event_from_row)
        .collect()
    }
}

fn order_from_row(row: &PgRow) -> Result<OrderRecord, StoreError> {
    Ok(OrderRecord {
        id: row.try_get("id")?,
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
        placed_at: row.try_get("placed_at")?,
        history: Vec::new(),
    })
}

fn event_from_row(row: &PgRow) -> Result<StatusEvent, StoreError> {
    Ok(StatusEvent {
        order_id: row.try_get("order_id")?,
        seq: row.try_get("seq")?,
        status: parse_status(row.try_get("status")?)?,
        partner_id: row.try_get("partner_id")?,
        detail: row.try_get("detail")?,
        tracking_id: row.try_get("tracking_id")?,
        occurred_at: row.try_get("occurred_at")?,
        detail_code: row.try_get("detail_code")?,
        action_required: row.try_get("action_required")?,
        needs_review: row.try_get("needs_review")?,
        recorded_at: row.try_get("recorded_at")?,
    })
}
