//! The SQLite steps that move whole batches (the embedded default). Batches travel as one JSON
//! array read with `json_each`, so each bookkeeping step is still one statement per batch.
//!
//! SQLite has one writer at a time, so leasing is a single guarded `UPDATE … WHERE order_id IN
//! (SELECT … LIMIT n)`: atomic by itself, which is all that several dispatchers on one file need.
//! Every write transaction starts with a write, taking the write lock at once (waiting on the
//! busy timeout) instead of failing on a read-to-write upgrade. Commits are announced on the
//! process's change feed (SQLite has no `NOTIFY`).

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::SqlitePool;
use uuid::Uuid;
use waybill_service_kit::db::{
    Change, ChangeFeed, Id, IdList, Instant, TextList, sqlite_write_turn,
};

use super::{
    error::StoreError,
    model::{AuditBatch, EventBatch, LeaseRequest, RecordReport},
    rows::{AuditRow, EventRow, LeasedRow, convert},
    statements::{LeaseKind, acknowledging_statuses, fenced, save_audit_copy},
};
use crate::domain::{
    cycle::replay::Replayed,
    model::UnpublishedEvent,
    record::{AuditCopy, BatchRecord, Fence},
};

const LEASE_DUE: &str = include_str!("sql/lease_due.sqlite.sql");
const LEASE_OVERDUE: &str = include_str!("sql/lease_overdue.sqlite.sql");
const LEASED: &str = include_str!("sql/leased.sqlite.sql");
const RECORD: &str = include_str!("sql/record.sqlite.sql");
const CLAIM_EVENTS: &str = include_str!("sql/claim_events.sqlite.sql");
const MARK_PUBLISHED: &str = "UPDATE order_status_events SET published_at = $1 \
                              FROM (SELECT value ->> '$.id' AS id, value ->> '$.seq' AS seq \
                                    FROM json_each($2)) AS k \
                              WHERE order_status_events.order_id = k.id \
                                AND order_status_events.seq = k.seq";
const CLAIM_AUDITS: &str = "SELECT order_id, topic, payload, headers, attempts, last_error, \
                            due_at FROM audit_outbox WHERE due_at <= $1 ORDER BY due_at LIMIT $2";
const DELETE_AUDITS: &str =
    "DELETE FROM audit_outbox WHERE order_id IN (SELECT value FROM json_each($1))";
const RESCHEDULE_AUDITS: &str = "UPDATE audit_outbox SET attempts = f.attempts, \
                                 last_error = f.error, due_at = f.due \
                                 FROM (SELECT value ->> '$.id' AS id, \
                                              value ->> '$.attempts' AS attempts, \
                                              value ->> '$.error' AS error, \
                                              value ->> '$.due' AS due \
                                       FROM json_each($1)) AS f \
                                 WHERE audit_outbox.order_id = f.id";
const REPLAY: &str = include_str!("sql/replay.sqlite.sql");

/// Leases rows of `kind` and returns them with what producing needs (lines excepted).
pub(super) async fn lease(
    pool: &SqlitePool,
    kind: LeaseKind,
    lease: &LeaseRequest,
) -> Result<Vec<LeasedRow>, StoreError> {
    // The lease is a write: this process's writers take turns without SQLite's sleeping busy
    // handler (the turn ends with the statement).
    let turn = sqlite_write_turn(pool).await;
    let ids: Vec<Id> = sqlx::query_scalar(match kind {
        LeaseKind::Due => LEASE_DUE,
        LeaseKind::Overdue => LEASE_OVERDUE,
    })
    .bind(&lease.owner)
    .bind(Instant(lease.expires_at))
    .bind(Id(lease.batch_id))
    .bind(Instant(lease.now))
    .bind(i64::from(lease.limit))
    .fetch_all(pool)
    .await?;
    drop(turn);
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(LEASED)
        .bind(IdList(ids.into_iter().map(Into::into).collect()))
        .bind(Id(lease.batch_id))
        .bind(acknowledging_statuses())
        .fetch_all(pool)
        .await?)
}

/// Records a batch's outcome in one transaction, fenced; announces the events appended.
pub(super) async fn record(
    pool: &SqlitePool,
    feed: &ChangeFeed,
    fence: &Fence,
    batch: &BatchRecord,
    now: DateTime<Utc>,
) -> Result<RecordReport, StoreError> {
    let micros = |at: Option<DateTime<Utc>>| at.map(|at| Instant(at).unix_micros());
    let updates = json!(
        batch
            .updates
            .iter()
            .map(|u| json!({
                "id": u.order_id.to_string(),
                "state": u.state.short_name(),
                "attempts": u.attempts,
                "next": Instant(u.next_attempt_at).unix_micros(),
                "error": u.last_error,
                "partner": u.partner_id,
                "route": u.route_id,
                "resends": u.resends,
                "sent": micros(u.sent_at),
                "due": micros(u.ack_due_at),
                "partition": u.sent_position.map(|p| p.partition),
                "offset": u.sent_position.map(|p| p.offset),
            }))
            .collect::<Vec<_>>()
    )
    .to_string();
    let first_sends = json!(
        batch
            .first_sends
            .iter()
            .map(|(id, partner)| json!({ "id": id.to_string(), "partner": partner }))
            .collect::<Vec<_>>()
    )
    .to_string();
    let attempts = json!(
        batch
            .attempts
            .iter()
            .map(|a| {
                json!({
                    "id": a.order_id.to_string(), "attempt": a.attempt, "error": a.error,
                    "partner": a.partner_id, "topic": a.topic,
                })
            })
            .collect::<Vec<_>>()
    )
    .to_string();
    let _turn = sqlite_write_turn(pool).await;
    let mut tx = waybill_service_kit::db::begin(pool).await?;
    // Each part fenced in the statement itself: only rows this lease still holds.
    let recorded: Vec<(String, Id)> = sqlx::query_as(RECORD)
        .bind(&fence.owner)
        .bind(Id(fence.batch_id))
        .bind(Instant(now))
        .bind(&updates)
        .bind(&first_sends)
        .bind(&attempts)
        .fetch_all(&mut *tx)
        .await?;
    let (mut applied, mut events_appended) = (Vec::new(), Vec::new());
    for (kind, order_id) in recorded {
        match kind.as_str() {
            "applied" => applied.push(Uuid::from(order_id)),
            _ => events_appended.push(Uuid::from(order_id)),
        }
    }
    let applied_set: HashSet<Uuid> = applied.iter().copied().collect();
    // Rare (the audit topic failed while the partner's took the order): one row each.
    for copy in batch
        .audit_copies
        .iter()
        .filter(|c| applied_set.contains(&c.order_id))
    {
        save_audit_copy(copy, now).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    for order_id in &events_appended {
        feed.publish(Change::OrderStatus(*order_id));
    }
    Ok(RecordReport {
        fenced: fenced(batch, &applied_set),
        applied,
        events_appended,
    })
}

/// Reads up to `limit` unpublished events. No row locks in SQLite; holding the write lock
/// across a produce would stall every writer. With one dispatcher per SQLite file (the
/// embedded shape) nobody competes.
pub(super) async fn claim_events(
    pool: &SqlitePool,
    limit: u32,
) -> Result<Box<dyn EventBatch>, StoreError> {
    let rows: Vec<EventRow> = sqlx::query_as(CLAIM_EVENTS)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    Ok(Box::new(SqliteEventBatch {
        pool: pool.clone(),
        events: rows.into_iter().map(Into::into).collect(),
    }))
}

/// Reads up to `limit` audit copies due by `now` (as with events: no row locks, one
/// dispatcher per file).
pub(super) async fn claim_audits(
    pool: &SqlitePool,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Box<dyn AuditBatch>, StoreError> {
    let rows: Vec<AuditRow> = sqlx::query_as(CLAIM_AUDITS)
        .bind(Instant(now))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    Ok(Box::new(SqliteAuditBatch {
        pool: pool.clone(),
        copies: convert(rows)?,
    }))
}

/// Carries out a replay's rows (see [`super::AdminStore::replay`]); wakes this process's
/// dispatcher.
pub(super) async fn replay(
    pool: &SqlitePool,
    feed: &ChangeFeed,
    rows: &[Replayed],
    now: DateTime<Utc>,
    retryable: &TextList,
) -> Result<Vec<Uuid>, StoreError> {
    let rows = json!(
        rows.iter()
            .map(|r| json!({
                "id": r.order_id.to_string(),
                "state": r.state.short_name(),
                "attempts": r.attempts,
                "resends": r.resends,
                "due": Instant(r.next_attempt_at).unix_micros(),
            }))
            .collect::<Vec<_>>()
    )
    .to_string();
    let retried: Vec<Id> = sqlx::query_scalar(REPLAY)
        .bind(Instant(now))
        .bind(rows)
        .bind(retryable)
        .fetch_all(pool)
        .await?;
    let mut retried: Vec<Uuid> = retried.into_iter().map(Into::into).collect();
    retried.sort();
    if !retried.is_empty() {
        feed.publish(Change::Outbox);
    }
    Ok(retried)
}

struct SqliteEventBatch {
    pool: SqlitePool,
    events: Vec<UnpublishedEvent>,
}

#[async_trait]
impl EventBatch for SqliteEventBatch {
    fn events(&self) -> &[UnpublishedEvent] {
        &self.events
    }

    async fn mark_published(self: Box<Self>, now: DateTime<Utc>) -> Result<(), StoreError> {
        if self.events.is_empty() {
            return Ok(());
        }
        let keys = json!(
            self.events
                .iter()
                .map(|e| json!({ "id": e.order_id.to_string(), "seq": e.seq }))
                .collect::<Vec<_>>()
        )
        .to_string();
        let _turn = sqlite_write_turn(&self.pool).await;
        sqlx::query(MARK_PUBLISHED)
            .bind(Instant(now))
            .bind(keys)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

struct SqliteAuditBatch {
    pool: SqlitePool,
    copies: Vec<AuditCopy>,
}

#[async_trait]
impl AuditBatch for SqliteAuditBatch {
    fn copies(&self) -> &[AuditCopy] {
        &self.copies
    }

    async fn settle(
        self: Box<Self>,
        delivered: &[Uuid],
        failed: &[AuditCopy],
    ) -> Result<(), StoreError> {
        let _turn = sqlite_write_turn(&self.pool).await;
        let mut tx = waybill_service_kit::db::begin(&self.pool).await?;
        if !delivered.is_empty() {
            sqlx::query(DELETE_AUDITS)
                .bind(IdList(delivered.to_vec()))
                .execute(&mut *tx)
                .await?;
        }
        if !failed.is_empty() {
            let rows = json!(
                failed
                    .iter()
                    .map(|c| json!({
                        "id": c.order_id.to_string(), "attempts": c.attempts,
                        "error": c.last_error, "due": Instant(c.due_at).unix_micros(),
                    }))
                    .collect::<Vec<_>>()
            )
            .to_string();
            sqlx::query(RESCHEDULE_AUDITS)
                .bind(rows)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
