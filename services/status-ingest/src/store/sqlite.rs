//! The SQLite batch transaction (the embedded default). Its first statement is a write (the
//! first report's replay-guard insert), so it takes SQLite's single write lock at once and holds
//! it to the commit: reports are serialised, which is what the row locks do on Postgres, and
//! nothing is ever left out of a batch. Per report, under its savepoint: replay guard and
//! snapshot as one query (sent with the savepoint's opening), then, if accepted, the order bump,
//! history event and dispatch row acknowledged as one more (and the rejection's statements):
//! two hand-offs to sqlx's SQLite thread a report, all under the file's one write lock.
//! Commits are announced on the in-process change feed.

use sqlx::{Executor as _, SqliteConnection, SqlitePool};
use waybill_service_kit::{
    clock::SharedClock,
    db::{Change, ChangeFeed, Failure, Id, Instant, classify, sqlite_write_turn},
};

use super::{
    error::StoreError,
    model::{AuthenticatedReport, InBatch},
    statements::{Applying, Ruling, Savepoint, SnapshotRow, Step, Woken, reroute, rule},
};

/// The first report's savepoint opened, then its replay guard and snapshot: one query.
const FIRST_GUARD_AND_SNAPSHOT: &str = concat!(
    "SAVEPOINT report;\n",
    include_str!("sql/guard_and_snapshot.sqlite.sql")
);
/// The last report's savepoint released and the next one's opened, then its replay guard and
/// snapshot: one query.
const NEXT_GUARD_AND_SNAPSHOT: &str = concat!(
    "RELEASE SAVEPOINT report; SAVEPOINT report;\n",
    include_str!("sql/guard_and_snapshot.sqlite.sql")
);
const ACCEPT: &str = include_str!("sql/accept.sqlite.sql");

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
    let opening = savepoint.next_with(FIRST_GUARD_AND_SNAPSHOT, NEXT_GUARD_AND_SNAPSHOT);
    let result = match apply(conn, opening, clock, report).await {
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

/// The report's savepoint opened, its replay guard and snapshot (`guard_and_snapshot`: one of
/// the two queries above), the ruling and, if accepted, the writes.
async fn apply(
    conn: &mut SqliteConnection,
    guard_and_snapshot: &'static str,
    clock: &SharedClock,
    report: &AuthenticatedReport,
) -> Result<Step, Applying> {
    let order_id = Id(report.order_id);
    let row: Option<SnapshotRow> = sqlx::query_as(guard_and_snapshot)
        .bind(order_id)
        .bind(&report.partner_id)
        .bind(&report.report_id)
        .bind(&report.key_id)
        .bind(&report.token_id)
        .bind(Instant(report.token_id_kept_until))
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
    let sequence: i64 = sqlx::query_scalar(ACCEPT)
        .bind(order_id)
        .bind(&report.partner_id)
        .bind(&report.report_id)
        .bind(effects.order_status.short_name())
        .bind(effects.record_tracking)
        .bind(&report.tracking_id)
        .bind(report.status.short_name())
        .bind(&report.detail)
        .bind(Instant(report.occurred_at))
        .bind(Instant(at))
        .bind(&report.detail_code)
        .bind(report.action_required)
        .bind(effects.needs_review)
        .bind(effects.acknowledge)
        .fetch_one(&mut *conn)
        .await?;
    if effects.reroute {
        for statement in reroute(report, at) {
            statement.execute(&mut *conn).await?;
        }
    }
    Ok(Step::Keep(acceptance.accepted(sequence, at)))
}

#[cfg(test)]
mod tests {
    use waybill_service_kit::db::dispatch_moves::sets_acknowledged;

    /// The accepted report's writes move the dispatch row to `ACKNOWLEDGED` exactly as the
    /// shared move does (`waybill_service_kit::db::dispatch_moves`).
    #[test]
    fn the_accept_writes_acknowledge_as_the_shared_move_does() {
        assert!(sets_acknowledged(super::ACCEPT));
    }
}
