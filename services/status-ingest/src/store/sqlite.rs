//! The SQLite report transaction (the embedded default). It starts with its write (the replay
//! guard's insert) so it takes SQLite's single write lock at once: reports are serialised,
//! which is what the order-row lock does on Postgres. Commits are announced on the in-process
//! change feed.

use chrono::{DateTime, Utc};
use sqlx::SqlitePool;
use waybill_service_kit::db::{Change, ChangeFeed, Id, Instant};

use super::{
    AuthenticatedReport, ReportOutcome, StoreError,
    sql::{Ruling, SnapshotRow, reroute, rule},
};

const GUARD: &str = "INSERT INTO report_token_ids (partner_id, jti, expires_at) \
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
const SNAPSHOT: &str = include_str!("sql/snapshot.sqlite.sql");
// The next sequence follows the latest event (the relay appends SENT_TO_PARTNER without writing
// the order row); the write lock is this transaction's, so nothing comes in between.
const BUMP: &str = "UPDATE orders SET status = $2, \
                        status_seq = (SELECT max(seq) FROM order_status_events \
                                      WHERE order_id = $1) + 1, \
                        tracking_id = CASE WHEN $3 THEN $4 ELSE tracking_id END \
                    WHERE id = $1 RETURNING status_seq";
const APPEND: &str = include_str!("sql/append.sqlite.sql");
// Clearing the lease fences out a relay batch holding the row (see `sql/append.pg.sql`).
const ACKNOWLEDGE: &str = "UPDATE dispatch SET state = 'ACKNOWLEDGED', ack_due_at = NULL, \
                               lease_owner = NULL, lease_expires_at = NULL, batch_id = NULL, \
                               updated_at = $3 \
                           WHERE order_id = $1 AND partner_id = $2 AND state <> 'ACKNOWLEDGED'";

/// Records `report` at `now` (see [`super::IngestStore::record_report`]).
pub(super) async fn record_report(
    pool: &SqlitePool,
    feed: &ChangeFeed,
    report: &AuthenticatedReport,
    now: DateTime<Utc>,
) -> Result<ReportOutcome, StoreError> {
    let order_id = Id(report.order_id);
    let mut tx = waybill_service_kit::db::begin(pool).await?;
    // First statement writes: the write lock is taken up front.
    let fresh = sqlx::query(GUARD)
        .bind(&report.partner_id)
        .bind(&report.token_id)
        .bind(Instant(report.token_id_kept_until))
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    let row: Option<SnapshotRow> = sqlx::query_as(SNAPSHOT)
        .bind(order_id)
        .bind(&report.partner_id)
        .bind(&report.report_id)
        .bind(fresh)
        .fetch_optional(&mut *tx)
        .await?;
    let effects = match rule(row, report)? {
        Ruling::Refuse(outcome) => return Ok(outcome),
        Ruling::Spend(outcome) => {
            tx.commit().await?;
            return Ok(outcome);
        }
        Ruling::Apply(effects) => effects,
    };
    let sequence: i64 = sqlx::query_scalar(BUMP)
        .bind(order_id)
        .bind(effects.order_status.short_name())
        .bind(effects.record_tracking)
        .bind(&report.tracking_id)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query(APPEND)
        .bind(order_id)
        .bind(&report.partner_id)
        .bind(&report.report_id)
        .bind(sequence)
        .bind(report.status.short_name())
        .bind(&report.detail)
        .bind(&report.tracking_id)
        .bind(Instant(report.occurred_at))
        .bind(Instant(now))
        .bind(&report.detail_code)
        .bind(report.action_required)
        .bind(effects.needs_review)
        .execute(&mut *tx)
        .await?;
    if effects.acknowledge {
        sqlx::query(ACKNOWLEDGE)
            .bind(order_id)
            .bind(&report.partner_id)
            .bind(Instant(now))
            .execute(&mut *tx)
            .await?;
    }
    if effects.reroute {
        for statement in reroute(report, now) {
            statement.execute(&mut *tx).await?;
        }
    }
    tx.commit().await?;
    feed.publish(Change::OrderStatus(report.order_id));
    if effects.reroute {
        feed.publish(Change::Outbox);
    }
    Ok(ReportOutcome::Accepted { sequence, effects })
}
