//! Reports recorded one at a time, each under its savepoint, in the batch's transaction: the
//! reports of a batch that share an order, a token id or a report id with one before them (after
//! the head, seeing what it did), and every report of a batch whose head could not be recorded
//! together. Three round trips each (savepoint, `sql/snapshot_batch.pg.sql`, the append); the
//! rows are locked `NOWAIT`, and a report whose rows another transaction holds, or that lost a
//! deadlock or the race for its report id, is rolled back to its savepoint and left out.

use sqlx::{Executor as _, PgConnection};
use waybill_service_kit::{
    clock::SharedClock,
    db::{Failure, classify},
};

use super::super::{
    error::StoreError,
    model::{AuthenticatedReport, InBatch},
    statements::{Applying, Ruling, Savepoint, SnapshotRow, Step, rule},
};

const SNAPSHOT_IN_BATCH: &str = include_str!("../sql/snapshot_batch.pg.sql");

/// Records `report` under the batch's next savepoint. `Err`: the transaction can no longer be
/// used (the batch fails).
pub(super) async fn in_savepoint(
    conn: &mut PgConnection,
    savepoint: &mut Savepoint,
    clock: &SharedClock,
    report: &AuthenticatedReport,
) -> Result<InBatch, StoreError> {
    conn.execute(savepoint.next()).await?;
    let failure = match apply_in_batch(conn, clock, report).await {
        Ok(Step::Keep(outcome)) => return Ok(InBatch::Decided(outcome)),
        Ok(Step::Undo(outcome)) => {
            conn.execute(Savepoint::ROLLBACK).await?;
            return Ok(InBatch::Decided(outcome));
        }
        Err(Applying::Store(error)) => {
            conn.execute(Savepoint::ROLLBACK).await?;
            return Ok(InBatch::Failed(error));
        }
        Err(Applying::Sql(error)) => error,
    };
    if classify(&failure) == Failure::Unavailable {
        // The connection is gone or the server is going away: so is the batch.
        return Err(StoreError::Unavailable(failure));
    }
    conn.execute(Savepoint::ROLLBACK).await?;
    if super::is_lock_busy(&failure)
        || classify(&failure) == Failure::Conflict
        || super::is_report_id_conflict(&failure)
    {
        tracing::debug!(order_id = %report.order_id, error = %failure, "report left out of the batch, recorded alone");
        Ok(InBatch::LeftOut)
    } else {
        Ok(InBatch::Failed(failure.into()))
    }
}

/// The snapshot, the ruling and, if accepted, the append.
async fn apply_in_batch(
    conn: &mut PgConnection,
    clock: &SharedClock,
    report: &AuthenticatedReport,
) -> Result<Step, Applying> {
    let row: Option<SnapshotRow> = super::snapshot_query(SNAPSHOT_IN_BATCH, report)
        .fetch_optional(&mut *conn)
        .await?;
    let acceptance = match rule(row, report)? {
        Ruling::Refuse(outcome) => return Ok(Step::Undo(outcome)),
        Ruling::Spend(outcome) => return Ok(Step::Keep(outcome)),
        Ruling::Apply(acceptance) => acceptance,
    };
    // The rows are locked: from here the report is true but for the commit.
    let at = clock.now();
    let sequence = super::append(conn, report, &acceptance.effects, at).await?;
    Ok(Step::Keep(acceptance.accepted(sequence, at)))
}
