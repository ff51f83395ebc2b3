//! The Postgres steps that move whole batches (production). Batches travel as arrays
//! (`UNNEST`), so every bookkeeping step is one statement whatever the batch size; a lease is a
//! transaction holding its rows with `FOR UPDATE SKIP LOCKED` until their bookkeeping commits,
//! so any number of dispatchers share the outbox; claimed events and audit copies stay
//! row-locked until settled.

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;
use waybill_service_kit::db::TextList;

use super::{
    error::StoreError,
    model::{AuditBatch, HeldRows, LeaseRequest, RecordReport},
    rows::{AuditRow, LeasedRow, convert},
    statements::{LeaseKind, acknowledging_statuses, fenced, save_audit_copy},
};
use crate::domain::{
    cycle::replay::Replayed,
    record::{AuditCopy, BatchRecord, Fence, RowUpdate},
};

const LEASE_DUE: &str = include_str!("sql/lease_due.pg.sql");
const LEASE_OVERDUE: &str = include_str!("sql/lease_overdue.pg.sql");
const RECORD_UPDATES: &str = include_str!("sql/record_updates.pg.sql");
const RECORD_FIRST_SENDS: &str = include_str!("sql/record_first_sends.pg.sql");
const RECORD_ATTEMPTS: &str = include_str!("sql/record_attempts.pg.sql");
const CLAIM_AUDITS: &str = "SELECT order_id, topic, payload, headers, attempts, last_error, \
                            due_at FROM audit_outbox WHERE due_at <= $1 ORDER BY due_at \
                            LIMIT $2 FOR UPDATE SKIP LOCKED";
const DELETE_AUDITS: &str = "DELETE FROM audit_outbox WHERE order_id = ANY($1)";
const RESCHEDULE_AUDITS: &str = "UPDATE audit_outbox a SET attempts = f.attempts, \
                                 last_error = f.last_error, due_at = f.due_at \
                                 FROM UNNEST($1::uuid[], $2::int[], $3::text[], \
                                             $4::timestamptz[]) \
                                     AS f (order_id, attempts, last_error, due_at) \
                                 WHERE a.order_id = f.order_id";
const REPLAY: &str = include_str!("sql/replay.pg.sql");

/// Leases rows of `kind` and returns them with what producing needs (lines excepted), locked
/// by a transaction left open: the batch is recorded through the returned [`HeldRows`], and
/// the rows stay this lease's until then. An empty lease ends its transaction at once.
///
/// The server ends the transaction (and the session) once it sits idle for the lease's length,
/// so a stalled instance, or one whose produce outlived the lease, loses its rows to the next
/// instance and its late bookkeeping is refused; a crashed instance's rows are free as soon as
/// its connection drops.
pub(super) async fn lease(
    pool: &PgPool,
    kind: LeaseKind,
    lease: &LeaseRequest,
) -> Result<(Vec<LeasedRow>, Option<Box<dyn HeldRows>>), StoreError> {
    let query = sqlx::query_as(match kind {
        LeaseKind::Due => LEASE_DUE,
        LeaseKind::Overdue => LEASE_OVERDUE,
    })
    .bind(lease.now)
    .bind(i64::from(lease.limit));
    let query = match kind {
        LeaseKind::Due => query,
        LeaseKind::Overdue => query.bind(acknowledging_statuses()),
    };
    let idle_limit = (lease.expires_at - lease.now).num_milliseconds().max(1);
    let mut tx = waybill_service_kit::db::begin_with(pool, lease_begin(idle_limit)).await?;
    let rows: Vec<LeasedRow> = query.fetch_all(&mut *tx).await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok((rows, None));
    }
    let held = PgHeldRows {
        tx,
        fence: Fence {
            owner: lease.owner.clone(),
            batch_id: lease.batch_id,
        },
        ids: rows.iter().map(LeasedRow::id).collect(),
    };
    Ok((rows, Some(Box::new(held))))
}

/// Begins a lease's transaction and sets, for the rest of it, how its statements are planned
/// ([`lease_planning`]) and how long it may sit idle (`idle_limit_ms`) before the server ends
/// it: one simple query, one round trip (the limit is an integer, formatted in).
fn lease_begin(idle_limit_ms: i64) -> String {
    format!(
        "BEGIN; {}; SET LOCAL idle_in_transaction_session_timeout = {idle_limit_ms}",
        lease_planning()
    )
}

/// How a lease's transaction plans its statements: the due indexes walked in order (see
/// [`walk_indexes_in_order`]) and every batch statement by key whatever the statistics say (the
/// kit's `KEYED_PLANS`), as `SET LOCAL` statements, built once. Public for the test that holds
/// every statement of the lease's transaction to these plans (`tests/plans.rs`).
pub fn lease_planning() -> &'static str {
    static PLANNING: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SET LOCAL enable_sort = off; {}",
            waybill_service_kit::db::keyed_plans_locally()
        )
    });
    &PLANNING
}

/// Takes the oldest rows by walking their partial index in order (`dispatch_due`,
/// `dispatch_handover_due`, `order_status_events_unpublished`) and stopping at the batch size,
/// for the rest of `tx`. The planner would otherwise sort the whole backlog whenever its
/// statistics say the backlog is small — as they do on a fresh table, or in production after a
/// quiet spell, right before an outage builds a real backlog: measured at 30 ms per claim of 500
/// with 20,000 events pending, growing with the backlog, where the in-order walk takes 2 ms.
pub(super) async fn walk_indexes_in_order(
    tx: &mut Transaction<'static, Postgres>,
) -> Result<(), StoreError> {
    sqlx::query("SET LOCAL enable_sort = off")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A lease's open transaction, holding its rows' locks.
struct PgHeldRows {
    tx: Transaction<'static, Postgres>,
    /// Who leased, for the attempt log.
    fence: Fence,
    /// The rows locked: a record for any other is refused, as SQLite's fence would.
    ids: HashSet<Uuid>,
}

#[async_trait]
impl HeldRows for PgHeldRows {
    async fn record(
        self: Box<Self>,
        batch: &BatchRecord,
        now: DateTime<Utc>,
    ) -> Result<RecordReport, StoreError> {
        let Self {
            mut tx,
            fence,
            ids: held,
        } = *self;
        // Rows of the batch this lease does not hold, in the batch's order.
        let foreign = fenced(batch, &held);
        let own;
        let mine = if foreign.is_empty() {
            batch
        } else {
            own = batch.only(&held);
            &own
        };
        let events_appended = match write_record(&mut tx, &fence, mine, now).await {
            Ok(appended) => appended,
            // The server ended the transaction (idle past the lease) or the connection is gone:
            // the locks went with it, so the rows may be another instance's by now.
            Err(error) if lease_lost(&error) => {
                return Ok(RecordReport {
                    fenced: fenced(batch, &HashSet::new()),
                    ..RecordReport::default()
                });
            }
            Err(error) => return Err(error),
        };
        // A failed commit is returned as it is: whether it took effect is unknown.
        tx.commit().await?;
        Ok(RecordReport {
            applied: mine.updates.iter().map(|u| u.order_id).collect(),
            fenced: foreign,
            events_appended,
        })
    }

    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.rollback().await?;
        Ok(())
    }
}

/// Whether `error` means a lease's transaction is over: its connection is gone, or the server
/// ended the session (idle in transaction past the lease, or shutting down).
fn lease_lost(error: &StoreError) -> bool {
    match error {
        StoreError::Unavailable(_) => true,
        StoreError::Database(error) => error
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| {
                code == "25P03" || code.starts_with("57P") || code.starts_with("08")
            }),
        _ => false,
    }
}

/// Writes a batch's outcome in `tx`, whose lease holds every row of it; returns the orders that
/// got a `SENT_TO_PARTNER` event.
async fn write_record(
    tx: &mut Transaction<'static, Postgres>,
    fence: &Fence,
    batch: &BatchRecord,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, StoreError> {
    let updates = &batch.updates;
    if !updates.is_empty() {
        let column =
            |f: fn(&RowUpdate) -> Option<String>| updates.iter().map(f).collect::<Vec<_>>();
        sqlx::query(RECORD_UPDATES)
            .bind(now)
            .bind(updates.iter().map(|u| u.order_id).collect::<Vec<_>>())
            .bind(
                updates
                    .iter()
                    .map(|u| u.state.short_name())
                    .collect::<Vec<_>>(),
            )
            .bind(updates.iter().map(|u| u.attempts).collect::<Vec<_>>())
            .bind(
                updates
                    .iter()
                    .map(|u| u.next_attempt_at)
                    .collect::<Vec<_>>(),
            )
            .bind(column(|u| u.last_error.clone()))
            .bind(column(|u| u.partner_id.clone()))
            .bind(column(|u| u.route_id.clone()))
            .bind(updates.iter().map(|u| u.resends).collect::<Vec<_>>())
            .bind(updates.iter().map(|u| u.sent_at).collect::<Vec<_>>())
            .bind(updates.iter().map(|u| u.ack_due_at).collect::<Vec<_>>())
            .bind(
                updates
                    .iter()
                    .map(|u| u.sent_position.map(|p| p.partition))
                    .collect::<Vec<_>>(),
            )
            .bind(
                updates
                    .iter()
                    .map(|u| u.sent_position.map(|p| p.offset))
                    .collect::<Vec<_>>(),
            )
            .execute(&mut **tx)
            .await?;
    }

    let events_appended: Vec<Uuid> = if batch.first_sends.is_empty() {
        Vec::new()
    } else {
        sqlx::query_scalar(RECORD_FIRST_SENDS)
            .bind(
                batch
                    .first_sends
                    .iter()
                    .map(|(id, _)| *id)
                    .collect::<Vec<_>>(),
            )
            .bind(
                batch
                    .first_sends
                    .iter()
                    .map(|(_, p)| p.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(now)
            .fetch_all(&mut **tx)
            .await?
    };

    let attempts = &batch.attempts;
    if !attempts.is_empty() {
        sqlx::query(RECORD_ATTEMPTS)
            .bind(now)
            .bind(&fence.owner)
            .bind(fence.batch_id)
            .bind(attempts.iter().map(|a| a.order_id).collect::<Vec<_>>())
            .bind(attempts.iter().map(|a| a.attempt).collect::<Vec<_>>())
            .bind(
                attempts
                    .iter()
                    .map(|a| a.error.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                attempts
                    .iter()
                    .map(|a| a.partner_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                attempts
                    .iter()
                    .map(|a| a.topic.as_str())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut **tx)
            .await?;
    }
    // Rare (the audit topic failed while the partner's took the order): one row each.
    for copy in &batch.audit_copies {
        save_audit_copy(copy, now).execute(&mut **tx).await?;
    }
    Ok(events_appended)
}

/// Claims up to `limit` audit copies due by `now`, row-locked until the batch settles.
pub(super) async fn claim_audits(
    pool: &PgPool,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Box<dyn AuditBatch>, StoreError> {
    let mut tx = waybill_service_kit::db::begin(pool).await?;
    let rows: Vec<AuditRow> = sqlx::query_as(CLAIM_AUDITS)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
    let copies = convert(rows)?;
    Ok(Box::new(PgAuditBatch { tx, copies }))
}

/// Carries out a replay's rows (see [`super::AdminStore::replay`]); wakes every dispatcher.
pub(super) async fn replay(
    pool: &PgPool,
    rows: &[Replayed],
    now: DateTime<Utc>,
    retryable: &TextList,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(REPLAY)
        .bind(now)
        .bind(rows.iter().map(|r| r.order_id).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.state.short_name())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.attempts).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.resends).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.next_attempt_at).collect::<Vec<_>>())
        .bind(retryable)
        .fetch_all(pool)
        .await?)
}

struct PgAuditBatch {
    tx: Transaction<'static, Postgres>,
    copies: Vec<AuditCopy>,
}

#[async_trait]
impl AuditBatch for PgAuditBatch {
    fn copies(&self) -> &[AuditCopy] {
        &self.copies
    }

    async fn settle(
        self: Box<Self>,
        delivered: &[Uuid],
        failed: &[AuditCopy],
    ) -> Result<(), StoreError> {
        let Self { mut tx, .. } = *self;
        if !delivered.is_empty() {
            sqlx::query(DELETE_AUDITS)
                .bind(delivered)
                .execute(&mut *tx)
                .await?;
        }
        if !failed.is_empty() {
            sqlx::query(RESCHEDULE_AUDITS)
                .bind(failed.iter().map(|c| c.order_id).collect::<Vec<_>>())
                .bind(failed.iter().map(|c| c.attempts).collect::<Vec<_>>())
                .bind(
                    failed
                        .iter()
                        .map(|c| c.last_error.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(failed.iter().map(|c| c.due_at).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
