//! The SQLite ingest store (the embedded default). Ids are UUID text, instants INTEGER
//! microseconds. The transaction starts with its write (the replay guard's insert) so it takes
//! SQLite's single write lock at once: reports are serialised, which is what the order-row lock
//! does on Postgres. Commits are announced on the in-process change feed.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};
use waybill_service_kit::db::{Change, ChangeFeed, from_unix_micros, to_unix_micros};

use super::{
    AuthenticatedReport, EnrolledKey, IngestStore, ReportOutcome, StoreError, parse_state,
    parse_status, rejection_note,
};
use crate::domain::decision::{Decision, Effects, OrderSnapshot, decide};

/// Reports in SQLite.
#[derive(Debug, Clone)]
pub struct SqliteIngestStore {
    pool: SqlitePool,
    feed: ChangeFeed,
}

impl SqliteIngestStore {
    /// A store on `pool` (already migrated); commits are announced on `feed`.
    pub fn new(pool: SqlitePool, feed: ChangeFeed) -> Self {
        Self { pool, feed }
    }
}

async fn append(
    tx: &mut Transaction<'_, Sqlite>,
    report: &AuthenticatedReport,
    effects: &Effects,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let order_id = report.order_id.to_string();
    let now_micros = to_unix_micros(now);
    let sequence: i64 = sqlx::query_scalar(
        "UPDATE orders SET status_seq = status_seq + 1, status = ?2, \
             tracking_id = CASE WHEN ?3 THEN ?4 ELSE tracking_id END, \
             partner_id = CASE WHEN ?5 THEN NULL ELSE partner_id END \
         WHERE id = ?1 RETURNING status_seq",
    )
    .bind(&order_id)
    .bind(effects.order_status.short_name())
    .bind(effects.record_tracking)
    .bind(&report.tracking_id)
    .bind(effects.reroute)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO order_status_events (order_id, seq, status, partner_id, detail, tracking_id, \
             report_id, occurred_at, recorded_at, detail_code, action_required, needs_review) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&order_id)
    .bind(sequence)
    .bind(report.status.short_name())
    .bind(&report.partner_id)
    .bind(&report.detail)
    .bind(&report.tracking_id)
    .bind(&report.report_id)
    .bind(to_unix_micros(report.occurred_at))
    .bind(now_micros)
    .bind(&report.detail_code)
    .bind(report.action_required)
    .bind(effects.needs_review)
    .execute(&mut **tx)
    .await?;
    if effects.acknowledge {
        // Clearing the lease fences out a relay batch holding the row (see the Postgres store).
        sqlx::query(
            "UPDATE dispatch SET state = 'ACKNOWLEDGED', ack_due_at = NULL, lease_owner = NULL, \
                 lease_expires_at = NULL, batch_id = NULL, updated_at = ?3 \
             WHERE order_id = ?1 AND partner_id = ?2 AND state <> 'ACKNOWLEDGED'",
        )
        .bind(&order_id)
        .bind(&report.partner_id)
        .bind(now_micros)
        .execute(&mut **tx)
        .await?;
    }
    if effects.reroute {
        sqlx::query(
            "INSERT INTO dispatch_rejections (order_id, partner_id, report_id, rejected_at) \
             VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&order_id)
        .bind(&report.partner_id)
        .bind(&report.report_id)
        .bind(now_micros)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE dispatch SET state = 'PENDING', partner_id = NULL, route_id = NULL, \
                 attempts = 0, resends = 0, next_attempt_at = ?3, ack_due_at = NULL, sent_at = NULL, \
                 last_error = ?4, lease_owner = NULL, lease_expires_at = NULL, batch_id = NULL, \
                 updated_at = ?3 \
             WHERE order_id = ?1 AND partner_id = ?2",
        )
        .bind(&order_id)
        .bind(&report.partner_id)
        .bind(now_micros)
        .bind(rejection_note(&report.partner_id, &report.report_id))
        .execute(&mut **tx)
        .await?;
    }
    Ok(sequence)
}

#[async_trait]
impl IngestStore for SqliteIngestStore {
    async fn partner_key(
        &self,
        partner_id: &str,
        key_id: &str,
    ) -> Result<Option<EnrolledKey>, StoreError> {
        let row = sqlx::query(
            "SELECT public_key, revoked_at FROM partner_keys WHERE partner_id = ? AND key_id = ?",
        )
        .bind(partner_id)
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(EnrolledKey {
                public_key: row.try_get("public_key")?,
                revoked_at: row
                    .try_get::<Option<i64>, _>("revoked_at")?
                    .map(from_unix_micros),
            })
        })
        .transpose()
    }

    async fn record_report(
        &self,
        report: &AuthenticatedReport,
        now: DateTime<Utc>,
    ) -> Result<ReportOutcome, StoreError> {
        let order_id = report.order_id.to_string();
        let mut tx = self.pool.begin().await?;
        // First statement writes: the write lock is taken up front.
        let fresh = sqlx::query(
            "INSERT INTO report_token_ids (partner_id, jti, expires_at) VALUES (?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&report.partner_id)
        .bind(&report.token_id)
        .bind(to_unix_micros(report.token_id_kept_until))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let row = sqlx::query(
            "SELECT o.status, d.partner_id AS routed_partner, d.state AS dispatch_state, \
                 EXISTS (SELECT 1 FROM dispatch_rejections r WHERE r.order_id = o.id AND r.partner_id = ?2) AS rejected, \
                 (SELECT e.order_id = o.id FROM order_status_events e \
                  WHERE e.partner_id = ?2 AND e.report_id = ?3) AS earlier_same_order \
             FROM orders o LEFT JOIN dispatch d ON d.order_id = o.id WHERE o.id = ?1",
        )
        .bind(&order_id)
        .bind(&report.partner_id)
        .bind(&report.report_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(ReportOutcome::NotRouted);
        };
        let snapshot = OrderSnapshot {
            status: parse_status(row.try_get("status")?)?,
            routed_partner: row.try_get("routed_partner")?,
            dispatch_state: parse_state(row.try_get("dispatch_state")?)?,
            rejected_by_reporter: row.try_get("rejected")?,
            earlier_report_same_order: row.try_get("earlier_same_order")?,
            token_id_fresh: fresh,
        };
        let effects = match decide(
            &snapshot,
            &report.partner_id,
            report.status,
            !report.tracking_id.is_empty(),
        ) {
            Decision::Apply(effects) => effects,
            Decision::NotRouted => return Ok(ReportOutcome::NotRouted),
            Decision::Replayed => return Ok(ReportOutcome::Replayed),
            Decision::ReportIdReused => return Ok(ReportOutcome::ReportIdReused),
            // The token id is spent even so: a token is accepted once.
            Decision::Duplicate => {
                tx.commit().await?;
                return Ok(ReportOutcome::Duplicate);
            }
        };
        let sequence = append(&mut tx, report, &effects, now).await?;
        tx.commit().await?;
        self.feed.publish(Change::OrderStatus(report.order_id));
        if effects.reroute {
            self.feed.publish(Change::Outbox);
        }
        Ok(ReportOutcome::Accepted { sequence, effects })
    }

    async fn purge_token_ids(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM report_token_ids WHERE expires_at < ?")
                .bind(to_unix_micros(now))
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}
