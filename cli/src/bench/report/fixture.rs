//! What `bench report` writes before it measures, and its limit, on either backend: the bench
//! partner and its key, orders already sent to it (as the relay leaves them), and the raw
//! writes of an accepted report as plain SQL.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant as Stopwatch,
};

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;
use waybill_service_kit::{
    db::{Backend, Id, Instant, dispatch_moves, to_unix_micros},
    on_pool,
};
use waybill_token::TokenSigner;

use super::error::BenchError;

const PARTNER: &str = "INSERT INTO partners (id, display_name, enabled, handover_deadline_ms, \
                       resend_budget, topic, created_at, updated_at) \
                       VALUES ($1, 'bench partner', TRUE, 86400000, 0, 'waybill.partner.' || $1, $2, $2)";
const KEY: &str = "INSERT INTO partner_keys (partner_id, key_id, public_key, created_at) \
                   VALUES ($1, $2, $3, $4)";

/// The bench partner and its key.
pub(super) async fn enrol(
    db: &Backend,
    partner: &str,
    signer: &TokenSigner,
    now: DateTime<Utc>,
) -> Result<(), BenchError> {
    on_pool!(db, |pool| {
        sqlx::query(PARTNER)
            .bind(partner)
            .bind(Instant(now))
            .execute(pool)
            .await?;
        sqlx::query(KEY)
            .bind(partner)
            .bind(signer.key_id())
            .bind(signer.verifying_key().to_bytes().to_vec())
            .bind(Instant(now))
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// `count` orders already sent to `partner` (as the relay leaves them), in one statement
/// (Postgres) or one transaction (SQLite).
pub(super) async fn routed_orders(
    db: &Backend,
    partner: &str,
    count: usize,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, BenchError> {
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
    match db {
        Backend::Postgres(pool) => {
            sqlx::query(
                "WITH ids AS (SELECT unnest($1::uuid[]) AS id), \
                 o AS ( \
                     INSERT INTO orders (id, idempotency_key, request_hash, customer_id, customer_name, customer_email, \
                         customer_phone, ship_line1, ship_line2, ship_city, ship_region, ship_postal_code, ship_country_code, \
                         currency_code, total_minor, region, partner_id, status, status_seq, placed_at) \
                     SELECT id, id::text, '\\x00'::bytea, 'bench', 'Bench', 'bench@example.com', '', '1 Main St', '', \
                         'Springfield', '', '12345', 'US', 'USD', 1000, 'bench', $2, 'SENT_TO_PARTNER', 2, $3 FROM ids \
                     RETURNING id), \
                 e AS ( \
                     INSERT INTO order_status_events (order_id, seq, status, partner_id, occurred_at, recorded_at, published_at) \
                     SELECT o.id, s.seq, s.status, CASE WHEN s.seq = 2 THEN $2 ELSE '' END, $3, $3, $3 \
                     FROM o CROSS JOIN (VALUES (1, 'PLACED'), (2, 'SENT_TO_PARTNER')) AS s (seq, status)) \
                 INSERT INTO dispatch (order_id, state, next_attempt_at, partner_id, route_id, sent_at, ack_due_at, created_at, updated_at) \
                 SELECT id, 'SENT', $3, $2, 'bench', $3, $3 + interval '1 day', $3, $3 FROM o",
            )
            .bind(&ids)
            .bind(partner)
            .bind(now)
            .execute(pool)
            .await?;
        }
        Backend::Sqlite(pool) => {
            let json = format!(
                "[{}]",
                ids.iter()
                    .map(|id| format!("\"{id}\""))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let (now, due) = (to_unix_micros(now), to_unix_micros(now + Duration::days(1)));
            let mut tx = waybill_service_kit::db::begin(pool).await?;
            sqlx::query(
                "INSERT INTO orders (id, idempotency_key, request_hash, customer_id, customer_name, customer_email, \
                     customer_phone, ship_line1, ship_line2, ship_city, ship_region, ship_postal_code, ship_country_code, \
                     currency_code, total_minor, region, partner_id, status, status_seq, placed_at) \
                 SELECT value, value, x'00', 'bench', 'Bench', 'bench@example.com', '', '1 Main St', '', \
                     'Springfield', '', '12345', 'US', 'USD', 1000, 'bench', $2, 'SENT_TO_PARTNER', 2, $3 \
                 FROM json_each($1)",
            )
            .bind(&json)
            .bind(partner)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO order_status_events (order_id, seq, status, partner_id, occurred_at, recorded_at, published_at) \
                 SELECT j.value, s.seq, s.status, CASE WHEN s.seq = 2 THEN $2 ELSE '' END, $3, $3, $3 \
                 FROM json_each($1) AS j CROSS JOIN (SELECT 1 AS seq, 'PLACED' AS status \
                                                     UNION ALL SELECT 2, 'SENT_TO_PARTNER') AS s",
            )
            .bind(&json)
            .bind(partner)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO dispatch (order_id, state, next_attempt_at, partner_id, route_id, sent_at, ack_due_at, created_at, updated_at) \
                 SELECT value, 'SENT', $3, $2, 'bench', $3, $4, $3, $3 FROM json_each($1)",
            )
            .bind(&json)
            .bind(partner)
            .bind(now)
            .bind(due)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
    }
    Ok(ids)
}

/// Writes out what is pending (Postgres `CHECKPOINT`, SQLite a WAL checkpoint) and waits, so
/// that the phase measured next does not pay for a checkpoint an earlier phase set off; whether
/// it could (a Postgres role needs `pg_checkpoint` or superuser: without it the phases are
/// measured anyway).
pub(super) async fn checkpoint(db: &Backend) -> bool {
    let done = match db {
        Backend::Postgres(pool) => sqlx::query("CHECKPOINT").execute(pool).await.map(|_| ()),
        Backend::Sqlite(pool) => sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(pool)
            .await
            .map(|_| ()),
    };
    match done {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "cannot checkpoint: the phases are measured without");
            false
        }
    }
}

const RAW_GUARD: &str =
    "INSERT INTO report_token_ids (partner_id, jti, expires_at) VALUES ($1, $2, $3)";
const RAW_BUMP: &str = "UPDATE orders SET status_seq = status_seq + 1, status = 'SHIPPED', \
                        tracking_id = 'BENCH' WHERE id = $1 RETURNING status_seq";
const RAW_EVENT: &str = "INSERT INTO order_status_events (order_id, seq, status, partner_id, \
                         tracking_id, report_id, occurred_at, recorded_at) \
                         VALUES ($1, $2, 'SHIPPED', $3, 'BENCH', $4, $5, $5)";

/// The same writes as an accepted first SHIPPED report, as plain SQL, one transaction each,
/// `concurrency` at a time: how long they took.
pub(super) async fn raw_inserts(
    db: &Backend,
    partner: &str,
    orders: &[Uuid],
    concurrency: usize,
) -> Result<std::time::Duration, BenchError> {
    let next = Arc::new(AtomicUsize::new(0));
    let orders: Arc<[Uuid]> = orders.into();
    let started = Stopwatch::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (db, next, orders, partner) =
            (db.clone(), next.clone(), orders.clone(), partner.to_owned());
        tasks.push(tokio::spawn(async move {
            while let Some(order) = orders.get(next.fetch_add(1, Ordering::Relaxed)).copied() {
                raw_report(&db, &partner, order).await?;
            }
            Ok::<_, sqlx::Error>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| BenchError(e.to_string()))??;
    }
    Ok(started.elapsed())
}

/// One accepted report's writes in a transaction of their own.
async fn raw_report(db: &Backend, partner: &str, order: Uuid) -> Result<(), sqlx::Error> {
    let now = Utc::now();
    on_pool!(db, |pool| {
        let mut tx = waybill_service_kit::db::begin(pool).await?;
        sqlx::query(RAW_GUARD)
            .bind(partner)
            .bind(Uuid::new_v4().to_string())
            .bind(Instant(now + Duration::minutes(3)))
            .execute(&mut *tx)
            .await?;
        let seq: i64 = sqlx::query_scalar(RAW_BUMP)
            .bind(Id(order))
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(RAW_EVENT)
            .bind(Id(order))
            .bind(seq)
            .bind(partner)
            .bind(format!("raw-{order}"))
            .bind(Instant(now))
            .execute(&mut *tx)
            .await?;
        sqlx::query(dispatch_moves::ACKNOWLEDGE)
            .bind(Id(order))
            .bind(partner)
            .bind(Instant(now))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    });
    Ok(())
}
