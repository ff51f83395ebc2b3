//! The SQLite batch transaction (the embedded default). Its first statement is a write (the
//! first report's replay-guard insert), so it takes SQLite's single write lock at once and holds
//! it to the commit: reports are serialised, which is what the row locks do on Postgres, and
//! nothing is ever left out of a batch. Per report, under its savepoint: replay guard, snapshot,
//! order bump, history event, dispatch row acknowledged (and the rejection's statements).
//! Commits are announced on the in-process change feed.

use sqlx::{Executor as _, SqliteConnection, SqlitePool};
use waybill_service_kit::{
    clock::SharedClock,
    db::{Change, ChangeFeed, Failure, Id, Instant, classify, dispatch_moves, sqlite_write_turn},
};

use super::{
    error::StoreError,
    model::{AuthenticatedReport, InBatch},
    statements::{Applying, Ruling, Savepoint, SnapshotRow, Step, Woken, reroute, rule},
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
/// Records `reports` in one transaction (see [`super::SqlIngestStore::record_batch`]).
pub(super) async fn record_batch(
    pool: &SqlitePool,
    feed: &ChangeFeed,
    clock: &SharedClock,
    reports: &[AuthenticatedReport],
) -> Result<Vec<InBatch>, StoreError> {
    // This process's writers take turns without SQLite's sleeping busy handler.
    let _turn = sqlite_write_turn(pool).await;
    let mut tx = waybill_service_kit::db::begin(pool).await?;
    let mut savepoint = Savepoint::default();
    let mut woken = Woken::default();
    let mut results = Vec::with_capacity(reports.len());
    for report in reports {
        let result = in_savepoint(&mut tx, &mut savepoint, clock, report).await?;
        woken.note(report, &result);
        results.push(result);
    }
    // As on Postgres: a failed COMMIT is retryable for every report of the batch.
    tx.commit().await.map_err(StoreError::Unavailable)?;
    for order in woken.orders {
        feed.publish(Change::OrderStatus(order));
    }
    if woken.outbox {
        feed.publish(Change::Outbox);
    }
    Ok(results)
}

/// Records `report` under the batch's next savepoint. `Err`: the transaction can no longer be
/// used (the batch fails).
async fn in_savepoint(
    conn: &mut SqliteConnection,
    savepoint: &mut Savepoint,
    clock: &SharedClock,
    report: &AuthenticatedReport,
) -> Result<InBatch, StoreError> {
    conn.execute(savepoint.next()).await?;
    let result = match apply(conn, clock, report).await {
        Ok(Step::Keep(outcome)) => return Ok(InBatch::Decided(outcome)),
        Ok(Step::Undo(outcome)) => InBatch::Decided(outcome),
        Err(Applying::Store(error)) => InBatch::Failed(error),
        // Busy beyond the busy timeout, or the file is gone: so is the batch.
        Err(Applying::Sql(error)) if classify(&error) == Failure::Unavailable => {
            return Err(StoreError::Unavailable(error));
        }
        Err(Applying::Sql(error)) => InBatch::Failed(error.into()),
    };
    conn.execute(Savepoint::ROLLBACK).await?;
    Ok(result)
}

/// The replay guard, the snapshot, the ruling and, if accepted, the writes.
async fn apply(
    conn: &mut SqliteConnection,
    clock: &SharedClock,
    report: &AuthenticatedReport,
) -> Result<Step, Applying> {
    let order_id = Id(report.order_id);
    let fresh = sqlx::query(GUARD)
        .bind(&report.partner_id)
        .bind(&report.token_id)
        .bind(Instant(report.token_id_kept_until))
        .execute(&mut *conn)
        .await?
        .rows_affected()
        == 1;
    let row: Option<SnapshotRow> = sqlx::query_as(SNAPSHOT)
        .bind(order_id)
        .bind(&report.partner_id)
        .bind(&report.report_id)
        .bind(fresh)
        .bind(&report.key_id)
        .fetch_optional(&mut *conn)
        .await?;
    let acceptance = match rule(row, report)? {
        Ruling::Refuse(outcome) => return Ok(Step::Undo(outcome)),
        Ruling::Spend(outcome) => return Ok(Step::Keep(outcome)),
        Ruling::Apply(acceptance) => acceptance,
    };
    let effects = acceptance.effects;
    // The write lock is held: from here the report is true but for the commit.
    let at = clock.now();
    let sequence: i64 = sqlx::query_scalar(BUMP)
        .bind(order_id)
        .bind(effects.order_status.short_name())
        .bind(effects.record_tracking)
        .bind(&report.tracking_id)
        .fetch_one(&mut *conn)
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
        .bind(Instant(at))
        .bind(&report.detail_code)
        .bind(report.action_required)
        .bind(effects.needs_review)
        .execute(&mut *conn)
        .await?;
    if effects.acknowledge {
        sqlx::query(dispatch_moves::ACKNOWLEDGE)
            .bind(order_id)
            .bind(&report.partner_id)
            .bind(Instant(at))
            .execute(&mut *conn)
            .await?;
    }
    if effects.reroute {
        for statement in reroute(report, at) {
            statement.execute(&mut *conn).await?;
        }
    }
    Ok(Step::Keep(acceptance.accepted(sequence, at)))
}
