//! Writes orders straight into the outbox, exactly as Orders' placing transaction does (order,
//! lines, `PLACED` event and `PENDING` dispatch row in one transaction, then the wake-up): for
//! `waybill bench drain`, which must fill the outbox faster than the gRPC path allows, and for
//! tests of the relay that should not depend on the Orders service.

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;
use waybill_service_kit::db::{Backend, Change, Database, to_unix_micros};

/// One order to write: a single line, priced so that the total is `total_minor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureOrder {
    /// Order id.
    pub id: Uuid,
    /// Destination country.
    pub country_code: String,
    /// Destination region (may be empty).
    pub region: String,
    /// Destination postal code.
    pub postal_code: String,
    /// Currency of the total.
    pub currency_code: String,
    /// Total in minor units (one line, quantity 1).
    pub total_minor: i64,
    /// Placing time (the dispatch row is due then).
    pub placed_at: DateTime<Utc>,
    /// W3C trace context of the "placing request".
    pub traceparent: String,
}

impl FixtureOrder {
    /// An order to `country_code` worth `total_minor` USD cents, placed at `placed_at`.
    pub fn new(country_code: &str, total_minor: i64, placed_at: DateTime<Utc>) -> Self {
        let id = Uuid::new_v4();
        Self {
            id,
            country_code: country_code.to_owned(),
            region: String::new(),
            postal_code: "10115".to_owned(),
            currency_code: "USD".to_owned(),
            total_minor,
            placed_at,
            traceparent: format!(
                "00-{}-{}-01",
                Uuid::new_v4().simple(),
                &Uuid::new_v4().simple().to_string()[..16]
            ),
        }
    }
}

/// Writes `orders` in one transaction per 1,000 and wakes the dispatchers.
pub async fn insert_orders(db: &Database, orders: &[FixtureOrder]) -> Result<(), sqlx::Error> {
    for chunk in orders.chunks(1_000) {
        let rows = json!(
            chunk
                .iter()
                .map(|o| json!({
                    "id": o.id.to_string(),
                    "country": o.country_code,
                    "region": o.region,
                    "postal": o.postal_code,
                    "currency": o.currency_code,
                    "total": o.total_minor,
                    "placed_us": to_unix_micros(o.placed_at),
                    "placed": o.placed_at.to_rfc3339(),
                    "traceparent": o.traceparent,
                }))
                .collect::<Vec<_>>()
        )
        .to_string();
        match db.backend() {
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for statement in PG_STATEMENTS {
                    sqlx::query(statement).bind(&rows).execute(&mut *tx).await?;
                }
                sqlx::query("SELECT pg_notify('waybill_outbox', '')")
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Backend::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                for statement in SQLITE_STATEMENTS {
                    sqlx::query(statement).bind(&rows).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        }
    }
    db.feed().publish(Change::Outbox);
    Ok(())
}

const PG_STATEMENTS: [&str; 4] = [
    concat!(
        "INSERT INTO orders (id, idempotency_key, request_hash, customer_id, customer_name, customer_email, \
             customer_phone, ship_line1, ship_line2, ship_city, ship_region, ship_postal_code, ship_country_code, \
             currency_code, total_minor, region, status, status_seq, placed_at) \
         SELECT i.id, i.id::text, '\\x00'::bytea, 'customer-1', 'Ada Lovelace', 'ada@example.com', '+441234', \
             '1 Main St', '', 'Springfield', i.region, i.postal, i.country, i.currency, i.total, 'test', 'PLACED', 1, i.placed \
         FROM ",
        "jsonb_to_recordset($1::jsonb) AS i (id uuid, country text, region text, postal text, currency text, total bigint, placed timestamptz, traceparent text)"
    ),
    concat!(
        "INSERT INTO order_lines (order_id, line_no, sku, name, quantity, unit_price_minor, line_total_minor) \
         SELECT i.id, 1, 'SKU-1', 'Widget', 1, i.total, i.total FROM ",
        "jsonb_to_recordset($1::jsonb) AS i (id uuid, country text, region text, postal text, currency text, total bigint, placed timestamptz, traceparent text)"
    ),
    concat!(
        "INSERT INTO order_status_events (order_id, seq, status, occurred_at, recorded_at) \
         SELECT i.id, 1, 'PLACED', i.placed, i.placed FROM ",
        "jsonb_to_recordset($1::jsonb) AS i (id uuid, country text, region text, postal text, currency text, total bigint, placed timestamptz, traceparent text)"
    ),
    concat!(
        "INSERT INTO dispatch (order_id, state, next_attempt_at, traceparent, tracestate, created_at, updated_at) \
         SELECT i.id, 'PENDING', i.placed, i.traceparent, '', i.placed, i.placed FROM ",
        "jsonb_to_recordset($1::jsonb) AS i (id uuid, country text, region text, postal text, currency text, total bigint, placed timestamptz, traceparent text)"
    ),
];

const SQLITE_STATEMENTS: [&str; 4] = [
    "INSERT INTO orders (id, idempotency_key, request_hash, customer_id, customer_name, customer_email, \
         customer_phone, ship_line1, ship_line2, ship_city, ship_region, ship_postal_code, ship_country_code, \
         currency_code, total_minor, region, status, status_seq, placed_at) \
     SELECT value ->> '$.id', value ->> '$.id', x'00', 'customer-1', 'Ada Lovelace', 'ada@example.com', '+441234', \
         '1 Main St', '', 'Springfield', value ->> '$.region', value ->> '$.postal', value ->> '$.country', \
         value ->> '$.currency', value ->> '$.total', 'test', 'PLACED', 1, value ->> '$.placed_us' \
     FROM json_each(?1)",
    "INSERT INTO order_lines (order_id, line_no, sku, name, quantity, unit_price_minor, line_total_minor) \
     SELECT value ->> '$.id', 1, 'SKU-1', 'Widget', 1, value ->> '$.total', value ->> '$.total' FROM json_each(?1)",
    "INSERT INTO order_status_events (order_id, seq, status, occurred_at, recorded_at) \
     SELECT value ->> '$.id', 1, 'PLACED', value ->> '$.placed_us', value ->> '$.placed_us' FROM json_each(?1)",
    "INSERT INTO dispatch (order_id, state, next_attempt_at, traceparent, tracestate, created_at, updated_at) \
     SELECT value ->> '$.id', 'PENDING', value ->> '$.placed_us', value ->> '$.traceparent', '', \
         value ->> '$.placed_us', value ->> '$.placed_us' FROM json_each(?1)",
];
