//! Shared test fixtures for the Orders tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;
use waybill_orders::{
    domain::model::{Address, Customer, NewOrder, PricedLine},
    store::{self, OrderStore},
};
use waybill_proto::v1 as pb;
use waybill_service_kit::db::{Backend, Change, Database};
use waybill_test_kit::{TestBackend, TestDatabase};

/// A migrated, seeded database and its order store.
pub struct Fixture {
    pub db: Database,
    pub store: Arc<dyn OrderStore>,
    // Dropped last: drops the database.
    pub test_db: TestDatabase,
}

pub async fn fixture(backend: TestBackend) -> Fixture {
    let test_db = TestDatabase::create(backend).await;
    let db = test_db.connect().await;
    store::seed_catalog(&db).await.unwrap();
    Fixture {
        store: store::for_database(&db),
        db,
        test_db,
    }
}

pub fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + seconds, 123_000).unwrap()
}

pub fn new_order(key: &str, customer_id: &str, placed_at: DateTime<Utc>) -> NewOrder {
    NewOrder {
        id: Uuid::now_v7(),
        idempotency_key: key.to_owned(),
        request_hash: format!("hash-of-{key}").into_bytes(),
        customer: Customer {
            id: customer_id.to_owned(),
            name: "Grace Hopper".to_owned(),
            email: "grace@example.com".to_owned(),
            phone: String::new(),
        },
        ship_to: Address {
            line1: "1 Navy Way".to_owned(),
            line2: "Apt 2".to_owned(),
            city: "Arlington".to_owned(),
            region: "VA".to_owned(),
            postal_code: "22201".to_owned(),
            country_code: "US".to_owned(),
        },
        lines: vec![
            PricedLine {
                sku: "MUG-001".to_owned(),
                name: "Enamel camp mug".to_owned(),
                quantity: 2,
                unit_price_minor: 1250,
                line_total_minor: 2500,
            },
            PricedLine {
                sku: "BOOK-042".to_owned(),
                name: "The Hitchhiker's Guide".to_owned(),
                quantity: 1,
                unit_price_minor: 899,
                line_total_minor: 899,
            },
        ],
        currency_code: "USD".to_owned(),
        total_minor: 3399,
        region: "test".to_owned(),
        placed_at,
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        tracestate: "vendor=1".to_owned(),
    }
}

/// Rows in each table the placing transaction writes: (orders, lines, events, dispatch).
pub async fn row_counts(db: &Database) -> (i64, i64, i64, i64) {
    const SQL: &str = "SELECT (SELECT COUNT(*) FROM orders) AS o, (SELECT COUNT(*) FROM order_lines) AS l, \
         (SELECT COUNT(*) FROM order_status_events) AS e, (SELECT COUNT(*) FROM dispatch) AS d";
    let counts = |row: &dyn Fn(&str) -> i64| (row("o"), row("l"), row("e"), row("d"));
    match db.backend() {
        Backend::Postgres(pool) => {
            let row = sqlx::query(SQL).fetch_one(pool).await.unwrap();
            counts(&|c| row.get::<i64, _>(c))
        }
        Backend::Sqlite(pool) => {
            let row = sqlx::query(SQL).fetch_one(pool).await.unwrap();
            counts(&|c| row.get::<i64, _>(c))
        }
    }
}

/// The dispatch row of an order: (state, traceparent, tracestate, next_attempt_at micros).
pub async fn dispatch_row(db: &Database, order_id: Uuid) -> (String, String, String, i64) {
    match db.backend() {
        Backend::Postgres(pool) => {
            let row = sqlx::query(
                "SELECT state, traceparent, tracestate, next_attempt_at FROM dispatch WHERE order_id = $1",
            )
            .bind(order_id)
            .fetch_one(pool)
            .await
            .unwrap();
            let next: DateTime<Utc> = row.get("next_attempt_at");
            (
                row.get("state"),
                row.get("traceparent"),
                row.get("tracestate"),
                next.timestamp_micros(),
            )
        }
        Backend::Sqlite(pool) => {
            let row = sqlx::query(
                "SELECT state, traceparent, tracestate, next_attempt_at FROM dispatch WHERE order_id = ?",
            )
            .bind(order_id.to_string())
            .fetch_one(pool)
            .await
            .unwrap();
            (
                row.get("state"),
                row.get("traceparent"),
                row.get("tracestate"),
                row.get("next_attempt_at"),
            )
        }
    }
}

/// Appends a status event the way the dispatcher and StatusIngest do: bump the order's
/// sequence (row lock), insert the event, notify. `db` may be a second connection, standing in
/// for another process.
pub async fn append_event(
    db: &Database,
    order_id: Uuid,
    status: pb::OrderStatus,
    partner: &str,
    at: DateTime<Utc>,
) {
    match db.backend() {
        Backend::Postgres(pool) => {
            let mut tx = waybill_service_kit::db::begin(pool).await.unwrap();
            let seq: i64 = sqlx::query_scalar(
                "UPDATE orders SET status_seq = status_seq + 1, status = $2, partner_id = $3 WHERE id = $1 RETURNING status_seq",
            )
            .bind(order_id)
            .bind(status.short_name())
            .bind(partner)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO order_status_events (order_id, seq, status, partner_id, detail, occurred_at, recorded_at) \
                 VALUES ($1, $2, $3, $4, 'on its way', $5, $5)",
            )
            .bind(order_id)
            .bind(seq)
            .bind(status.short_name())
            .bind(partner)
            .bind(at)
            .execute(&mut *tx)
            .await
            .unwrap();
            sqlx::query("SELECT pg_notify('waybill_order_status', $1)")
                .bind(order_id.to_string())
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        Backend::Sqlite(pool) => {
            let mut tx = waybill_service_kit::db::begin(pool).await.unwrap();
            let seq: i64 = sqlx::query_scalar(
                "UPDATE orders SET status_seq = status_seq + 1, status = ?2, partner_id = ?3 WHERE id = ?1 RETURNING status_seq",
            )
            .bind(order_id.to_string())
            .bind(status.short_name())
            .bind(partner)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO order_status_events (order_id, seq, status, partner_id, detail, occurred_at, recorded_at) \
                 VALUES (?1, ?2, ?3, ?4, 'on its way', ?5, ?5)",
            )
            .bind(order_id.to_string())
            .bind(seq)
            .bind(status.short_name())
            .bind(partner)
            .bind(at.timestamp_micros())
            .execute(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
            db.feed().publish(Change::OrderStatus(order_id));
        }
    }
}
