//! The Postgres steps that move whole batches (production). Batches travel as arrays
//! (`UNNEST`), so every bookkeeping step is one statement whatever the batch size; leasing uses
//! `FOR UPDATE SKIP LOCKED` so any number of dispatchers share the outbox; claimed events and
//! audit copies stay row-locked until settled.

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;
use waybill_proto::v1::DispatchState;
use waybill_service_kit::db::{IdList, TextList};

use super::{
    AuditBatch, AuditCopy, BatchRecord, EventBatch, Fence, LeaseRequest, RecordReport, RowUpdate,
    StoreError,
    rows::{AuditRow, EventRow, LeasedRow, convert},
    sql::{LeaseKind, acknowledging_statuses, fenced, save_audit_copy},
};
use crate::domain::model::{DispatchFilter, UnpublishedEvent};

const LEASE_DUE: &str = include_str!("sql/lease_due.pg.sql");
const LEASE_OVERDUE: &str = include_str!("sql/lease_overdue.pg.sql");
const FENCE: &str = "SELECT order_id FROM dispatch \
                     WHERE order_id = ANY($1) AND lease_owner = $2 AND batch_id = $3 \
                     ORDER BY order_id FOR UPDATE";
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

/// Leases rows of `kind` and returns them with what producing needs (lines excepted).
pub(super) async fn lease(
    pool: &PgPool,
    kind: LeaseKind,
    lease: &LeaseRequest,
) -> Result<Vec<LeasedRow>, StoreError> {
    let query = sqlx::query_as(match kind {
        LeaseKind::Due => LEASE_DUE,
        LeaseKind::Overdue => LEASE_OVERDUE,
    })
    .bind(lease.now)
    .bind(i64::from(lease.limit))
    .bind(&lease.owner)
    .bind(lease.expires_at)
    .bind(lease.batch_id);
    let query = match kind {
        LeaseKind::Due => query,
        LeaseKind::Overdue => query.bind(acknowledging_statuses()),
    };
    let mut tx = pool.begin().await?;
    walk_indexes_in_order(&mut tx).await?;
    let rows = query.fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows)
}

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

/// Records a batch's outcome in one transaction, fenced.
pub(super) async fn record(
    pool: &PgPool,
    fence: &Fence,
    batch: &BatchRecord,
    now: DateTime<Utc>,
) -> Result<RecordReport, StoreError> {
    let mut tx = pool.begin().await?;
    // The fence: which of these rows does this batch still hold? Locking them by primary key
    // keeps them ours until commit, so the update below needs no lease filter.
    let ids: Vec<Uuid> = batch.updates.iter().map(|u| u.order_id).collect();
    let applied: Vec<Uuid> = sqlx::query_scalar(FENCE)
        .bind(&ids)
        .bind(&fence.owner)
        .bind(fence.batch_id)
        .fetch_all(&mut *tx)
        .await?;
    let applied_set: HashSet<Uuid> = applied.iter().copied().collect();
    let updates: Vec<&RowUpdate> = batch
        .updates
        .iter()
        .filter(|u| applied_set.contains(&u.order_id))
        .collect();
    if !updates.is_empty() {
        let column =
            |f: fn(&RowUpdate) -> Option<String>| updates.iter().map(|u| f(u)).collect::<Vec<_>>();
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
            .execute(&mut *tx)
            .await?;
    }

    let first_sends: Vec<&(Uuid, String)> = batch
        .first_sends
        .iter()
        .filter(|(id, _)| applied_set.contains(id))
        .collect();
    let events_appended: Vec<Uuid> = if first_sends.is_empty() {
        Vec::new()
    } else {
        sqlx::query_scalar(RECORD_FIRST_SENDS)
            .bind(first_sends.iter().map(|(id, _)| *id).collect::<Vec<_>>())
            .bind(
                first_sends
                    .iter()
                    .map(|(_, p)| p.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(now)
            .fetch_all(&mut *tx)
            .await?
    };

    let attempts: Vec<_> = batch
        .attempts
        .iter()
        .filter(|a| applied_set.contains(&a.order_id))
        .collect();
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
            .execute(&mut *tx)
            .await?;
    }
    // Rare (the audit topic failed while the partner's took the order): one row each.
    for copy in batch
        .audit_copies
        .iter()
        .filter(|c| applied_set.contains(&c.order_id))
    {
        save_audit_copy(copy, now).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(RecordReport {
        fenced: fenced(batch, &applied_set),
        applied,
        events_appended,
    })
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
