//! The database side of `waybill bench drain` (and of `bench place`'s limit): filling the
//! outbox through the Orders store, the bare-SQL bookkeeping limit, and the check that every
//! order was drained.

use std::{sync::Arc, time::Instant};

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use sqlx::PgPool;
use uuid::Uuid;
use waybill_orders::{
    domain::model::{Address, Customer, NewOrder, PricedLine},
    store::{OrderStore, SqlOrderStore},
};
use waybill_service_kit::db::Database;

use super::measure::Rate;

/// Orders the bare-SQL limit leases at a time.
pub(crate) const LIMIT_BATCH: usize = 1_000;

/// The bare bookkeeping: lease [`LIMIT_BATCH`] due rows, then in one transaction mark them
/// `SENT` and append a `SENT_TO_PARTNER` event each (published already, so the relay has no
/// work left from them).
const LIMIT_LEASE: &str = "UPDATE dispatch SET lease_owner = $1, lease_expires_at = $2, \
                           batch_id = $3, updated_at = $4 \
                           WHERE order_id IN (SELECT order_id FROM dispatch \
                               WHERE state IN ('PENDING', 'RETRYING') AND next_attempt_at <= $4 \
                               ORDER BY next_attempt_at LIMIT $5 FOR UPDATE SKIP LOCKED) \
                           RETURNING order_id";
const LIMIT_RECORD: &str = "WITH sent AS ( \
                                UPDATE dispatch SET state = 'SENT', partner_id = $3, \
                                    sent_at = $4, lease_owner = NULL, lease_expires_at = NULL, \
                                    batch_id = NULL, updated_at = $4 \
                                WHERE order_id = ANY($1) AND batch_id = $2 \
                                RETURNING order_id) \
                            INSERT INTO order_status_events (order_id, seq, status, \
                                partner_id, occurred_at, recorded_at, published_at) \
                            SELECT order_id, 2, 'SENT_TO_PARTNER', $3, $4, $4, $4 FROM sent";
/// The limit's orders' `PLACED` events count as published: the relay would otherwise publish
/// them during the drain, work that is not the drain's.
const LIMIT_PLACED_PUBLISHED: &str = "UPDATE order_status_events e SET published_at = $2 \
                                      FROM orders o WHERE o.id = e.order_id \
                                      AND o.customer_id = $1 AND e.published_at IS NULL";

/// Counts every `PLACED` event of `customer`'s limit orders (both runs' orders) as published,
/// once, before the first run.
pub(crate) async fn mark_limit_events_published(
    pool: &PgPool,
    customer: &str,
) -> anyhow::Result<()> {
    sqlx::query(LIMIT_PLACED_PUBLISHED)
        .bind(format!("{customer}-limit"))
        .bind(Utc::now())
        .execute(pool)
        .await?;
    Ok(())
}

/// Runs the bare bookkeeping on `orders` due limit rows, on one connection, with the clock
/// `ahead` of the wall clock (so that rows placed in the future, kept out of the drain's way,
/// are due for it).
pub(crate) async fn measure_limit(
    pool: &PgPool,
    orders: usize,
    partner_id: &str,
    ahead: chrono::Duration,
) -> anyhow::Result<Rate> {
    let mut connection = pool.acquire().await?;
    let started = Instant::now();
    let mut done = 0;
    while done < orders {
        let now = Utc::now() + ahead;
        let batch_id = Uuid::new_v4();
        // The plan the relay's lease runs: the due index walked in order, not the whole backlog
        // sorted (see the dispatcher's Postgres store).
        let mut tx = sqlx::Connection::begin(&mut *connection).await?;
        sqlx::query("SET LOCAL enable_sort = off")
            .execute(&mut *tx)
            .await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(LIMIT_LEASE)
            .bind("bench-limit")
            .bind(now + chrono::Duration::seconds(30))
            .bind(batch_id)
            .bind(now)
            .bind(LIMIT_BATCH as i64)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        anyhow::ensure!(
            !ids.is_empty(),
            "the limit ran out of due rows after {done}"
        );
        let mut tx = sqlx::Connection::begin(&mut *connection).await?;
        sqlx::query(LIMIT_RECORD)
            .bind(&ids)
            .bind(batch_id)
            .bind(partner_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        done += ids.len();
    }
    Ok(Rate::new(done, started.elapsed()))
}

/// Starts a checkpoint and waits for it (`CHECKPOINT`), so that the phase measured next starts
/// on clean pages like the others. Otherwise a checkpoint the fill's writes set off lands in
/// one phase at random, and that phase alone pays for writing a full image of every page it
/// first changes after it, which moved a phase's rate by a third between runs. `false` when
/// the role may not (it needs `pg_checkpoint` or superuser): the run goes on without.
pub(crate) async fn checkpoint(pool: &PgPool) -> bool {
    match sqlx::query("CHECKPOINT").execute(pool).await {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(%error, "cannot CHECKPOINT: the phases are measured without");
            false
        }
    }
}

/// Drain orders recorded `SENT` with their `SENT_TO_PARTNER` event (whether every event is
/// published is the dispatcher store's to say: `Backlog::oldest_unpublished_at`).
const COUNT_SENT: &str = "SELECT count(*) FROM orders o \
                          JOIN dispatch d ON d.order_id = o.id AND d.state = 'SENT' \
                          WHERE o.customer_id = $1 \
                          AND EXISTS (SELECT 1 FROM order_status_events e \
                              WHERE e.order_id = o.id AND e.status = 'SENT_TO_PARTNER')";

pub(crate) async fn count_sent(db: &Database, customer: &str) -> anyhow::Result<usize> {
    let count: i64 = waybill_service_kit::on_pool!(db.backend(), |pool| {
        sqlx::query_scalar(COUNT_SENT)
            .bind(customer)
            .fetch_one(pool)
            .await?
    });
    Ok(usize::try_from(count).unwrap_or(0))
}

/// Places `count` orders through the Orders store, `in_flight` at once, placed at `placed_at`,
/// to `postal_prefix` then `1` (the bench route). Nothing is kept: each placement's record is
/// dropped as soon as it arrives.
pub(crate) async fn place(
    db: &Database,
    run: &str,
    customer: &str,
    postal_prefix: &str,
    placed_at: DateTime<Utc>,
    count: usize,
    in_flight: usize,
) -> anyhow::Result<()> {
    let store = Arc::new(SqlOrderStore::new(db));
    futures::stream::iter(0..count)
        .map(|index| {
            let store = store.clone();
            let order = bench_order(run, customer, postal_prefix, placed_at, index);
            async move { store.place_order(&order).await }
        })
        .buffer_unordered(in_flight.max(1))
        .try_for_each(|_| async { Ok(()) })
        .await?;
    Ok(())
}

/// One bench order: three lines, to Germany (`postal_prefix` then `1`: the bench route).
fn bench_order(
    run: &str,
    customer: &str,
    postal_prefix: &str,
    placed_at: DateTime<Utc>,
    index: usize,
) -> NewOrder {
    let line = |sku: &str, name: &str, quantity: u32, unit_price_minor: i64| PricedLine {
        sku: sku.to_owned(),
        name: name.to_owned(),
        quantity,
        unit_price_minor,
        line_total_minor: unit_price_minor * i64::from(quantity),
    };
    let lines = vec![
        line("MUG-001", "Mug", 2, 1_250),
        line("BOOK-042", "Book", 1, 2_999),
        line("SOCKS-3PK", "Socks", 5, 899),
    ];
    NewOrder {
        id: Uuid::now_v7(),
        idempotency_key: format!("bench-{run}-{index}"),
        request_hash: vec![0; 32],
        customer: Customer {
            id: customer.to_owned(),
            name: "Bench Customer".to_owned(),
            email: "bench@example.com".to_owned(),
            phone: String::new(),
        },
        ship_to: Address {
            line1: "1 Hauptstraße".to_owned(),
            line2: String::new(),
            city: "Berlin".to_owned(),
            region: String::new(),
            postal_code: format!("{postal_prefix}1"),
            country_code: "DE".to_owned(),
        },
        total_minor: lines.iter().map(|l| l.line_total_minor).sum(),
        lines,
        currency_code: "EUR".to_owned(),
        region: "bench".to_owned(),
        placed_at,
        traceparent: format!(
            "00-{}-{}-01",
            Uuid::new_v4().simple(),
            &Uuid::new_v4().simple().to_string()[..16]
        ),
        tracestate: String::new(),
    }
}
