//! `--prefill` of `waybill bench drain` and `bench place`: orders already in the database, as a
//! long-running installation has them, so the benches show whether the hot paths slow down as
//! the tables grow.
//!
//! Prefilled orders are finished business: placed a day ago, sent, acknowledged by their
//! partner (`ACKNOWLEDGED`), their three history events (`PLACED`, `SENT_TO_PARTNER`,
//! `RECEIVED_BY_PARTNER`) published and their successful attempt logged. Plain SQL writes them
//! 100,000 at a time; they stay in the database, so a later run with the same `--prefill` adds
//! nothing and one with a larger figure adds the difference. Postgres only.

use std::time::Instant;

use serde::Serialize;
use sqlx::PgPool;

/// Whose orders the prefilled ones are.
const CUSTOMER: &str = "bench-prefill";
/// Orders written per transaction.
const CHUNK: i64 = 100_000;

/// One chunk of finished orders. Its events carry this transaction's id; the publisher's cursor
/// is moved past every event of this transaction in the same transaction (the bench database
/// is a dedicated one: nothing else is waiting to be published there), so the publisher never
/// walks them.
const PREFILL: &str = "\
WITH placed AS (
    INSERT INTO orders (id, idempotency_key, request_hash, customer_id, customer_name,
        customer_email, customer_phone, ship_line1, ship_line2, ship_city, ship_region,
        ship_postal_code, ship_country_code, currency_code, total_minor, region, status,
        status_seq, placed_at)
    SELECT id, 'prefill-' || id, '\\x00', $2, 'Prefill', 'prefill@example.com', '',
        'Prefill Street 1', '', 'Berlin', '', '10115', 'DE', 'EUR', 1999, 'eu',
        'RECEIVED_BY_PARTNER', 3, now() - interval '1 day'
    FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, $1)) AS ids
    RETURNING id, placed_at
), lines AS (
    INSERT INTO order_lines (order_id, line_no, sku, name, quantity, unit_price_minor,
        line_total_minor)
    SELECT id, 1, 'PREFILL-1', 'Prefill item', 1, 1999, 1999 FROM placed
), dispatched AS (
    INSERT INTO dispatch (order_id, state, attempts, next_attempt_at, partner_id, route_id,
        sent_at, created_at, updated_at)
    SELECT id, 'ACKNOWLEDGED', 1, placed_at, 'prefill', 'prefill', placed_at, placed_at,
        placed_at
    FROM placed
), attempts AS (
    INSERT INTO dispatch_attempts (order_id, attempt, at, partner_id, topic, lease_owner,
        batch_id)
    SELECT id, 1, placed_at, 'prefill', 'waybill.partner.prefill', 'prefill',
        '00000000-0000-0000-0000-000000000000'
    FROM placed
)
INSERT INTO order_status_events (order_id, seq, status, partner_id, occurred_at, recorded_at,
    published_at)
SELECT p.id, s.seq, s.status, s.partner_id, p.placed_at, p.placed_at, p.placed_at
FROM placed p
CROSS JOIN (VALUES (1, 'PLACED', ''), (2, 'SENT_TO_PARTNER', 'prefill'),
                   (3, 'RECEIVED_BY_PARTNER', 'prefill')) AS s (seq, status, partner_id)";
const PAST_THIS_TRANSACTION: &str = "UPDATE event_cursor SET xid = pg_current_xact_id(), \
                                     order_id = 'ffffffff-ffff-ffff-ffff-ffffffffffff', \
                                     seq = 9223372036854775807, updated_at = now()";
const COUNT: &str = "SELECT count(*) FROM orders WHERE customer_id = $1";

/// What `--prefill` found and added.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Prefill {
    /// Prefilled orders in the database during the run.
    pub orders: u64,
    /// Of those, written by this run.
    pub added: u64,
    /// Seconds this run spent writing them.
    pub seconds: f64,
}

/// Brings the prefilled orders up to `target`, then refreshes the planner's statistics (as
/// autovacuum would have on a database that grew slowly).
pub(crate) async fn prefill(pool: &PgPool, target: u64) -> anyhow::Result<Prefill> {
    let started = Instant::now();
    let existing: i64 = sqlx::query_scalar(COUNT)
        .bind(CUSTOMER)
        .fetch_one(pool)
        .await?;
    let existing = u64::try_from(existing).unwrap_or(0);
    let mut missing = i64::try_from(target.saturating_sub(existing))?;
    let added = missing;
    while missing > 0 {
        let chunk = missing.min(CHUNK);
        let mut tx = waybill_service_kit::db::begin(pool).await?;
        sqlx::query(PREFILL)
            .bind(chunk)
            .bind(CUSTOMER)
            .execute(&mut *tx)
            .await?;
        sqlx::query(PAST_THIS_TRANSACTION).execute(&mut *tx).await?;
        tx.commit().await?;
        missing -= chunk;
    }
    if added > 0 {
        sqlx::query("ANALYZE").execute(pool).await?;
    }
    Ok(Prefill {
        orders: existing.max(target),
        added: u64::try_from(added)?,
        seconds: started.elapsed().as_secs_f64(),
    })
}
