//! The Postgres report transactions (production).
//!
//! **A batch** ([`record_batch`]) never waits for a row lock. Its head — the reports that share
//! no order, token id or report id, rejections aside: usually all of them — is recorded in one
//! statement whatever its size (`together.rs`). When the head is the whole batch, that statement
//! is a transaction by itself: one round trip, returning once its commit is flushed. Otherwise
//! the head's statement and then the rest, one at a time under a savepoint each
//! (`one_by_one.rs`), share one transaction. If the head's statement fails (a report id taken
//! meanwhile, a value the database refuses) it did nothing, and the whole batch is recorded one
//! at a time, under a savepoint each, so that only the report to blame fails. A report whose
//! rows another transaction holds (or that lost a deadlock or the race for its report id) is
//! left out.
//!
//! **A report left out** ([`record_alone`]) gets a transaction of its own that waits: the
//! dispatch row locked first, then the snapshot (`sql/snapshot.pg.sql`: replay guard, order row
//! locked), the append and its `NOTIFY`. Rows are locked in the relay's order — dispatch row,
//! then order — so a report and a relay batch recording the same order wait for each other
//! instead of deadlocking; a transaction that loses a deadlock or serialization conflict all the
//! same is run again.

use chrono::{DateTime, Utc};
use sqlx::{Connection as _, PgConnection, PgPool};
use uuid::Uuid;
use waybill_service_kit::{
    clock::SharedClock,
    db::{Failure, classify},
};

use super::{
    error::StoreError,
    model::{AuthenticatedReport, InBatch, ReportOutcome},
    statements::{Applying, Ruling, Savepoint, SnapshotRow, Woken, reroute, rule, split},
};
use crate::domain::decision::Effects;

mod one_by_one;
mod together;

const SNAPSHOT: &str = include_str!("../sql/snapshot.pg.sql");
const APPEND: &str = include_str!("../sql/append.pg.sql");
/// Every writer of an order's history locks its dispatch row first and holds it until commit:
/// the relay's record (its fence) while it numbers `SENT_TO_PARTNER` after the latest event, and
/// a report, before it reads the order. So one order's events are numbered and committed in
/// order, and the two never wait for each other in opposite orders.
const LOCK_DISPATCH: &str = "SELECT 1 FROM dispatch WHERE order_id = $1 FOR UPDATE";
/// Wakes, at commit, the watchers of the orders in $1 (comma-separated ids; the kit's listener
/// reads them) and, if $2, the relays (an order is due for routing again).
const NOTIFY: &str = "SELECT pg_notify('waybill_order_status', $1) WHERE $1 <> '' \
                      UNION ALL SELECT pg_notify('waybill_outbox', '') WHERE $2";
const REPORT_OWNER: &str = "SELECT order_id FROM order_status_events \
                            WHERE partner_id = $1 AND report_id = $2";

/// The name of the unique index on `(partner_id, report_id)` of the history.
const REPORT_UNIQUE: &str = "order_status_events_report_unique";
/// `lock_not_available`: a `NOWAIT` lock was held by another transaction.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// How often a report's own transaction is tried when it loses a deadlock.
const ATTEMPTS: u32 = 3;

/// Records `reports` in one transaction on `conn`, the writer's own connection, whose session
/// plans every statement by key (see the module docs and
/// [`super::SqlIngestStore::record_batch`]).
pub(super) async fn record_batch(
    conn: &mut PgConnection,
    clock: &SharedClock,
    reports: &[AuthenticatedReport],
) -> Result<Vec<InBatch>, StoreError> {
    let (head, mut rest) = split(reports, together::can_go_together);
    let head_reports: Vec<&AuthenticatedReport> = head.iter().map(|&i| &reports[i]).collect();
    if rest.is_empty() {
        // The usual batch: the head's statement is a transaction by itself, and returns once
        // its commit is flushed — one round trip for the whole batch.
        match together::record(conn, clock, &head_reports).await {
            Ok(ruled) => {
                return Ok(head_reports
                    .iter()
                    .zip(ruled)
                    .map(|(report, result)| {
                        result.unwrap_or_else(|error| {
                            // Committed as the statement decided; the caller is told it failed.
                            tracing::error!(order_id = %report.order_id, %error, "the batch statement and the decision disagree");
                            InBatch::Failed(error)
                        })
                    })
                    .collect());
            }
            // The outcome is unknown (committed or not): retryable for every report.
            Err(Applying::Sql(error)) if classify(&error) == Failure::Unavailable => {
                return Err(StoreError::Unavailable(error));
            }
            Err(Applying::Store(error)) => return Err(error),
            // The statement failed and did nothing: one report at a time, below, once its
            // transaction is over (the server answers the error before it has released the
            // statement's row locks, and answers nothing more on this connection until it has).
            Err(Applying::Sql(cause)) => {
                tracing::debug!(%cause, reports = reports.len(), "batch recorded one report at a time");
                conn.ping().await?;
                rest = (0..reports.len()).collect();
            }
        }
    }
    let mut results: Vec<Option<InBatch>> = reports.iter().map(|_| None).collect();
    // Woken by a NOTIFY before the commit (the head's statement notifies by itself).
    let mut woken = Woken::default();
    // The writer's own connection: a cancelled batch drops it, so sqlx's cancelled `BEGIN`
    // (see the kit's `begin`) cannot leave a session inside a transaction for anyone else.
    let mut tx = conn.begin().await?;
    if rest.len() < reports.len() {
        match together::record(&mut tx, clock, &head_reports).await {
            Ok(ruled) if ruled.iter().all(Result::is_ok) => {
                for (index, result) in head.into_iter().zip(ruled.into_iter().flatten()) {
                    results[index] = Some(result);
                }
            }
            Err(Applying::Sql(error)) if classify(&error) == Failure::Unavailable => {
                return Err(StoreError::Unavailable(error));
            }
            failed => {
                // A statement failed (a report id taken meanwhile, a value the database
                // refused), or disagreed with the decision: roll back, and record every report
                // one at a time, each under its savepoint, so that only the one to blame fails.
                match failed {
                    Err(Applying::Sql(cause)) => {
                        tracing::debug!(%cause, reports = reports.len(), "batch recorded one report at a time");
                    }
                    _ => {
                        tracing::warn!(
                            reports = reports.len(),
                            "the batch statement disagreed with the decision or could not be read; batch recorded one report at a time"
                        );
                    }
                }
                // Rolled back before the rows are asked for again (a dropped transaction's
                // rollback would come later, its locks held meanwhile).
                tx.rollback().await?;
                tx = conn.begin().await?;
                rest = (0..reports.len()).collect();
            }
        }
    }
    let mut savepoint = Savepoint::default();
    for index in rest {
        let report = &reports[index];
        let result = one_by_one::in_savepoint(&mut tx, &mut savepoint, clock, report).await?;
        woken.note(report, &result);
        results[index] = Some(result);
    }
    if !woken.is_empty() {
        notify(&mut tx, &woken).await?;
    }
    commit(tx).await?;
    Ok(results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| {
                InBatch::Failed(StoreError::Corrupt("a report was not recorded".to_owned()))
            })
        })
        .collect())
}

/// The accepted report's writes at `at`; the new event's sequence.
async fn append(
    conn: &mut PgConnection,
    report: &AuthenticatedReport,
    effects: &Effects,
    at: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
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
        .bind(at)
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
    Ok(sequence)
}

/// The `NOTIFY`s of a transaction that changed `woken`, sent at its commit.
async fn notify(conn: &mut PgConnection, woken: &Woken) -> Result<(), sqlx::Error> {
    let orders = woken
        .orders
        .iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(",");
    sqlx::query(NOTIFY)
        .bind(orders)
        .bind(woken.outbox)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records `report` in a transaction of its own that waits for its rows (one left out of a
/// batch).
pub(super) async fn record_alone(
    pool: &PgPool,
    clock: &SharedClock,
    report: &AuthenticatedReport,
) -> Result<ReportOutcome, StoreError> {
    let mut attempt = 1;
    let outcome = loop {
        match try_alone(pool, clock, report).await {
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
        Err(StoreError::Database(error)) if is_report_id_conflict(&error) => {
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

/// `sql` (one of the snapshot statements: `$1`–`$6` the report's order, partner, report id,
/// token id, until when the token id is kept, key id) bound to `report`.
pub(super) fn snapshot_query<'q>(
    sql: &'q str,
    report: &'q AuthenticatedReport,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, SnapshotRow, sqlx::postgres::PgArguments> {
    sqlx::query_as(sql)
        .bind(report.order_id)
        .bind(&report.partner_id)
        .bind(&report.report_id)
        .bind(&report.token_id)
        .bind(report.token_id_kept_until)
        .bind(&report.key_id)
}

async fn try_alone(
    pool: &PgPool,
    clock: &SharedClock,
    report: &AuthenticatedReport,
) -> Result<ReportOutcome, StoreError> {
    let mut tx = waybill_service_kit::db::begin(pool).await?;
    sqlx::query(LOCK_DISPATCH)
        .bind(report.order_id)
        .execute(&mut *tx)
        .await?;
    let row: Option<SnapshotRow> = snapshot_query(SNAPSHOT, report)
        .fetch_optional(&mut *tx)
        .await?;
    // Refused: rolled back (with the replay guard's insert when the order does not exist).
    let acceptance = match rule(row, report)? {
        Ruling::Refuse(outcome) => return Ok(outcome),
        Ruling::Spend(outcome) => {
            commit(tx).await?;
            return Ok(outcome);
        }
        Ruling::Apply(acceptance) => acceptance,
    };
    let at = clock.now();
    let sequence = append(&mut tx, report, &acceptance.effects, at).await?;
    let woken = Woken {
        orders: vec![report.order_id],
        outbox: acceptance.effects.reroute,
    };
    notify(&mut tx, &woken).await?;
    commit(tx).await?;
    Ok(acceptance.accepted(sequence, at))
}

/// Commits `tx`. Whatever the cause, a failed `COMMIT` is retryable for every report in the
/// transaction: none is to blame (a deferred check, the server going away), and one whose
/// commit did land after all is answered `duplicate` on its retry. A lost serialization or
/// deadlock stays recognisable as such ([`Failure::Conflict`]), so it is tried again at once.
async fn commit(tx: sqlx::Transaction<'_, sqlx::Postgres>) -> Result<(), StoreError> {
    tx.commit().await.map_err(StoreError::Unavailable)
}

fn is_report_id_conflict(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.constraint() == Some(REPORT_UNIQUE))
}

fn is_lock_busy(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some(LOCK_NOT_AVAILABLE))
}

#[cfg(test)]
mod tests {
    use waybill_service_kit::db::dispatch_moves::sets_acknowledged;

    /// The one-statement writes move the dispatch row to `ACKNOWLEDGED` exactly as the shared
    /// move does (`waybill_service_kit::db::dispatch_moves`).
    #[test]
    fn the_batch_writes_acknowledge_as_the_shared_move_does() {
        assert!(sets_acknowledged(super::APPEND));
        assert!(sets_acknowledged(super::together::RECORD_MANY));
    }
}
