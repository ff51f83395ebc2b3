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
use waybill_proto::v1::DispatchState;
use waybill_service_kit::db::{IdList, TextList};

use super::{
    AuditBatch, AuditCopy, BatchRecord, EventBatch, Fence, HeldRows, LeaseRequest, RecordReport,
    RowUpdate, StoreError,
    rows::{AuditRow, EventRow, LeasedRow, convert},
    sql::{LeaseKind, acknowledging_statuses, fenced, save_audit_copy},
};
use crate::domain::model::{DispatchFilter, UnpublishedEvent};

const LEASE_DUE: &str = include_str!("sql/lease_due.pg.sql");
const LEASE_OVERDUE: &str = include_str!("sql/lease_overdue.pg.sql");
const RECORD_UPDATES: &str = include_str!("sql/record_updates.pg.sql");
const RECORD_FIRST_SENDS: &str = include_str!("sql/record_first_sends.pg.sql");
const RECORD_ATTEMPTS: &str = include_str!("sql/record_attempts.pg.sql");
const CLAIM_EVENTS: &str = include_str!("sql/claim_events.pg.sql");
const LOCK_EVENT_CURSOR: &str = include_str!("sql/lock_event_cursor.pg.sql");
const WALK_EVENTS: &str = include_str!("sql/walk_events.pg.sql");
/// Events committed that the watermark still holds back (a transaction older than theirs is
/// running): the publisher looks again shortly instead of waiting for the next change.
/// (The newest id, read from the end of the index, not a search the planner may run as a scan.)
const HELD_BACK: &str = "SELECT COALESCE(max(xid) >= $1::xid8, FALSE) FROM order_status_events \
                         WHERE xid IS NOT NULL";
const MOVE_EVENT_CURSOR: &str = "UPDATE event_cursor SET xid = $1::xid8, order_id = $2, seq = $3, \
                                 updated_at = $4";
const MARK_PUBLISHED: &str = "UPDATE order_status_events e SET published_at = $1 \
                              FROM UNNEST($2::uuid[], $3::bigint[]) AS k (order_id, seq) \
                              WHERE e.order_id = k.order_id AND e.seq = k.seq";
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
const RETRY: &str = include_str!("sql/retry.pg.sql");

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
    let mut tx = pool.begin().await?;
    sqlx::query(LEASE_SETTINGS)
        .bind(idle_limit.to_string())
        .execute(&mut *tx)
        .await?;
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

/// For the rest of a lease's transaction: the due indexes walked in order (see
/// [`walk_indexes_in_order`]), and how long it may sit idle (`$1` ms) before the server ends it.
const LEASE_SETTINGS: &str = "SELECT set_config('enable_sort', 'off', TRUE), \
                              set_config('idle_in_transaction_session_timeout', $1, TRUE)";

/// Takes the oldest rows by walking their partial index in order (`dispatch_due`,
/// `dispatch_handover_due`, `order_status_events_unpublished`) and stopping at the batch size,
/// for the rest of `tx`. The planner would otherwise sort the whole backlog whenever its
/// statistics say the backlog is small — as they do on a fresh table, or in production after a
/// quiet spell, right before an outage builds a real backlog: measured at 30 ms per claim of 500
/// with 20,000 events pending, growing with the backlog, where the in-order walk takes 2 ms.
async fn walk_indexes_in_order(tx: &mut Transaction<'static, Postgres>) -> Result<(), StoreError> {
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

/// Claims up to `limit` unpublished events: those written before migration 0006, row-locked,
/// then the cursor's walk (see `0006_event_cursor.sql`), under the cursor row's lock, until the
/// batch settles.
pub(super) async fn claim_events(
    pool: &PgPool,
    limit: u32,
) -> Result<Box<dyn EventBatch>, StoreError> {
    let mut tx = pool.begin().await?;
    walk_indexes_in_order(&mut tx).await?;
    let legacy: Vec<EventRow> = sqlx::query_as(CLAIM_EVENTS)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
    let mut batch = PgEventBatch {
        legacy: legacy.len(),
        events: legacy.into_iter().map(Into::into).collect(),
        cursor: None,
        more_waiting: false,
        tx,
    };
    let room = i64::from(limit) - batch.events.len() as i64;
    if room == 0 {
        return Ok(Box::new(batch));
    }
    let Some(start) = sqlx::query_as::<_, CursorRow>(LOCK_EVENT_CURSOR)
        .fetch_optional(&mut *batch.tx)
        .await?
    else {
        // Another dispatcher is publishing.
        return Ok(Box::new(batch));
    };
    let rows: Vec<WalkedEventRow> = sqlx::query_as(WALK_EVENTS)
        .bind(&start.xid)
        .bind(start.order_id)
        .bind(start.seq)
        .bind(&start.watermark)
        .bind(room)
        .fetch_all(&mut *batch.tx)
        .await?;
    batch.more_waiting = if (rows.len() as i64) < room {
        sqlx::query_scalar(HELD_BACK)
            .bind(&start.watermark)
            .fetch_one(&mut *batch.tx)
            .await?
    } else {
        true
    };
    for row in rows {
        let event: UnpublishedEvent = row.event.into();
        batch.cursor = Some((row.xid, event.order_id, event.seq));
        if !row.published {
            batch.events.push(event);
        }
    }
    Ok(Box::new(batch))
}

/// The cursor row and the watermark (`lock_event_cursor.pg.sql`).
#[derive(sqlx::FromRow)]
struct CursorRow {
    xid: String,
    order_id: Uuid,
    seq: i64,
    watermark: String,
}

/// An event the cursor walked (`walk_events.pg.sql`).
#[derive(sqlx::FromRow)]
struct WalkedEventRow {
    #[sqlx(flatten)]
    event: EventRow,
    xid: String,
    published: bool,
}

/// Claims up to `limit` audit copies due by `now`, row-locked until the batch settles.
pub(super) async fn claim_audits(
    pool: &PgPool,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Box<dyn AuditBatch>, StoreError> {
    let mut tx = pool.begin().await?;
    let rows: Vec<AuditRow> = sqlx::query_as(CLAIM_AUDITS)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
    let copies = convert(rows)?;
    Ok(Box::new(PgAuditBatch { tx, copies }))
}

/// Sends rows back to `PENDING` (see [`super::DispatchStore::retry`]); wakes every dispatcher.
pub(super) async fn retry(
    pool: &PgPool,
    ids: &[Uuid],
    filter: &DispatchFilter,
    now: DateTime<Utc>,
    retryable: &TextList,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(RETRY)
        .bind(now)
        .bind(IdList(ids.to_vec()))
        .bind(filter.state.map(DispatchState::short_name))
        .bind(filter.partner_id.as_deref())
        .bind(retryable)
        .fetch_all(pool)
        .await?)
}

struct PgEventBatch {
    tx: Transaction<'static, Postgres>,
    events: Vec<UnpublishedEvent>,
    /// How many of `events` (the first ones) were claimed by row lock, from before 0006.
    legacy: usize,
    /// Where the cursor moves when the batch is published: the last event walked.
    cursor: Option<(String, Uuid, i64)>,
    /// Committed events remain after the walk (see [`EventBatch::more_waiting`]).
    more_waiting: bool,
}

#[async_trait]
impl EventBatch for PgEventBatch {
    fn events(&self) -> &[UnpublishedEvent] {
        &self.events
    }

    fn more_waiting(&self) -> bool {
        self.more_waiting
    }

    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.rollback().await?;
        Ok(())
    }

    async fn mark_published(self: Box<Self>, now: DateTime<Utc>) -> Result<(), StoreError> {
        let Self {
            mut tx,
            events,
            legacy,
            cursor,
            ..
        } = *self;
        let legacy = &events[..legacy];
        if !legacy.is_empty() {
            sqlx::query(MARK_PUBLISHED)
                .bind(now)
                .bind(legacy.iter().map(|e| e.order_id).collect::<Vec<_>>())
                .bind(legacy.iter().map(|e| e.seq).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
        }
        if let Some((xid, order_id, seq)) = cursor {
            sqlx::query(MOVE_EVENT_CURSOR)
                .bind(xid)
                .bind(order_id)
                .bind(seq)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
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
