//! The Postgres report transaction (production). A typical report is three statements: the
//! dispatch row locked first, the snapshot (replay guard taken, order row locked) and the append
//! (history event, order status and tracking id, dispatch row acknowledged, `NOTIFY` for
//! watchers). Rows are locked in the relay's order — dispatch row, then order — so a report and
//! a relay batch recording the same order wait for each other instead of deadlocking; a
//! transaction that loses a deadlock or serialization conflict all the same is run again.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;
use waybill_service_kit::db::{Failure, classify};

use super::{
    AuthenticatedReport, ReportOutcome, StoreError,
    sql::{Ruling, SnapshotRow, reroute, rule},
};

const SNAPSHOT: &str = include_str!("sql/snapshot.pg.sql");
const APPEND: &str = include_str!("sql/append.pg.sql");
/// Every writer of an order's history locks its dispatch row first and holds it until commit:
/// the relay's record (its fence) while it numbers `SENT_TO_PARTNER` after the latest event, and
/// a report, before it reads the order. So one order's events are numbered and committed in
/// order, and the two never wait for each other in opposite orders.
const LOCK_DISPATCH: &str = "SELECT 1 FROM dispatch WHERE order_id = $1 FOR UPDATE";
const WAKE_RELAYS: &str = "SELECT pg_notify('waybill_outbox', '')";
const REPORT_OWNER: &str = "SELECT order_id FROM order_status_events \
                            WHERE partner_id = $1 AND report_id = $2";

/// The name of the unique index on `(partner_id, report_id)` of the history.
const REPORT_UNIQUE: &str = "order_status_events_report_unique";

/// How often a report's transaction is tried when it loses a deadlock.
const ATTEMPTS: u32 = 3;

/// Records `report` at `now` (see [`super::IngestStore::record_report`]).
pub(super) async fn record_report(
    pool: &PgPool,
    report: &AuthenticatedReport,
    now: DateTime<Utc>,
) -> Result<ReportOutcome, StoreError> {
    let mut attempt = 1;
    let outcome = loop {
        match try_record(pool, report, now).await {
            Err(StoreError::Unavailable(cause)) if classify(&cause) == Failure::Conflict => {
                if attempt == ATTEMPTS {
                    // Still losing: answer UNAVAILABLE (retry with a fresh token), not INTERNAL.
                    break Err(StoreError::Unavailable(cause));
                }
                tracing::debug!(order_id = %report.order_id, attempt, error = %cause, "report transaction lost a deadlock, trying again");
                attempt += 1;
            }
            other => break other,
        }
    };
    match outcome {
        // The same report id committed by a concurrent call after this transaction's snapshot:
        // decide again from what is committed now.
        Err(error) if is_report_id_conflict(&error) => {
            let order: Option<Uuid> = sqlx::query_scalar(REPORT_OWNER)
                .bind(&report.partner_id)
                .bind(&report.report_id)
                .fetch_optional(pool)
                .await?;
            Ok(if order == Some(report.order_id) {
                ReportOutcome::Duplicate
            } else {
                ReportOutcome::ReportIdReused
            })
        }
        other => other,
    }
}

async fn try_record(
    pool: &PgPool,
    report: &AuthenticatedReport,
    now: DateTime<Utc>,
) -> Result<ReportOutcome, StoreError> {
    let mut tx = waybill_service_kit::db::begin(pool).await?;
    sqlx::query(LOCK_DISPATCH)
        .bind(report.order_id)
        .execute(&mut *tx)
        .await?;
    let row: Option<SnapshotRow> = sqlx::query_as(SNAPSHOT)
        .bind(report.order_id)
        .bind(&report.partner_id)
        .bind(&report.report_id)
        .bind(&report.token_id)
        .bind(report.token_id_kept_until)
        .fetch_optional(&mut *tx)
        .await?;
    // Refused: rolled back (with the replay guard's insert when the order does not exist).
    let effects = match rule(row, report)? {
        Ruling::Refuse(outcome) => return Ok(outcome),
        Ruling::Spend(outcome) => {
            tx.commit().await?;
            return Ok(outcome);
        }
        Ruling::Apply(effects) => effects,
    };
    let sequence: i64 = sqlx::query_scalar(APPEND)
        .bind(report.order_id)
        .bind(&report.partner_id)
        .bind(&report.report_id)
        .bind(effects.order_status.short_name())
        .bind(effects.record_tracking)
        .bind(&report.tracking_id)
        .bind(report.status.short_name())
        .bind(&report.detail)
        .bind(report.occurred_at)
        .bind(now)
        .bind(&report.detail_code)
        .bind(report.action_required)
        .bind(effects.needs_review)
        .bind(effects.acknowledge)
        .fetch_one(&mut *tx)
        .await?;
    if effects.reroute {
        for statement in reroute(report, now) {
            statement.execute(&mut *tx).await?;
        }
        // Wakes the relays at commit: the order is due for routing again.
        sqlx::query(WAKE_RELAYS).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(ReportOutcome::Accepted { sequence, effects })
}

fn is_report_id_conflict(error: &StoreError) -> bool {
    matches!(error, StoreError::Database(sqlx::Error::Database(db))
        if db.constraint() == Some(REPORT_UNIQUE))
}
