//! Publishing history events on Postgres (migration 0006): the cursor's walk over transaction
//! ids, under the cursor row's lock, and events written before 0006, row-locked and marked one
//! by one. One claim may walk several times (the relay produces one walk's events while it
//! reads the next); the cursor moves, at commit, past the walks that were produced.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{
    error::StoreError, model::EventBatch, postgres::walk_indexes_in_order, rows::EventRow,
};
use crate::domain::model::UnpublishedEvent;

const CLAIM_EVENTS: &str = include_str!("sql/claim_events.pg.sql");
const LOCK_EVENT_CURSOR: &str = include_str!("sql/lock_event_cursor.pg.sql");
const WALK_EVENTS: &str = include_str!("sql/walk_events.pg.sql");
/// The watermark for a walk after the first, in a transaction that holds the cursor row's lock
/// and so has an id of its own: the oldest transaction still running *other than this one*
/// (the snapshot's in-progress list leaves this transaction out; its `xmin` would not, and
/// would hold every later walk at this transaction's id). This transaction writes no event, so
/// leaving it out skips nothing.
const WATERMARK: &str = "SELECT least(pg_snapshot_xmax(s), \
                         (SELECT x FROM pg_snapshot_xip(s) AS x ORDER BY x LIMIT 1))::text \
                         FROM pg_current_snapshot() AS s";
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

/// Claims up to `limit` unpublished events: those written before migration 0006, row-locked,
/// then the cursor's walk (see `0006_event_cursor.sql`), under the cursor row's lock, until the
/// batch settles.
pub(super) async fn claim_events(
    pool: &PgPool,
    limit: u32,
) -> Result<Box<dyn EventBatch>, StoreError> {
    let mut tx = waybill_service_kit::db::begin(pool).await?;
    walk_indexes_in_order(&mut tx).await?;
    let legacy: Vec<EventRow> = sqlx::query_as(CLAIM_EVENTS)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
    let mut batch = PgEventBatch {
        legacy: legacy.len(),
        events: legacy.into_iter().map(Into::into).collect(),
        next_walk_from: None,
        walk_ends: Vec::new(),
        more_waiting: false,
        tx,
    };
    let room = i64::from(limit) - batch.events.len() as i64;
    if room == 0 {
        return Ok(Box::new(batch));
    }
    let Some(CursorRow { start, watermark }) = sqlx::query_as(LOCK_EVENT_CURSOR)
        .fetch_optional(&mut *batch.tx)
        .await?
    else {
        // Another dispatcher is publishing.
        return Ok(Box::new(batch));
    };
    batch.next_walk_from = Some(start);
    let walked = batch.walk(&watermark, room).await?;
    batch.events.extend(walked);
    Ok(Box::new(batch))
}

/// The cursor row and the watermark (`lock_event_cursor.pg.sql`).
#[derive(sqlx::FromRow)]
struct CursorRow {
    #[sqlx(flatten)]
    start: Position,
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

/// A place in the cursor's order: the event walked last.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Position {
    xid: String,
    order_id: Uuid,
    seq: i64,
}

struct PgEventBatch {
    tx: Transaction<'static, Postgres>,
    /// The events before 0006 and the first walk's.
    events: Vec<UnpublishedEvent>,
    /// How many of `events` (the first ones) were claimed by row lock, from before 0006.
    legacy: usize,
    /// Where the next walk starts (`None` without the cursor's lock: another dispatcher
    /// publishes).
    next_walk_from: Option<Position>,
    /// Where each walk ended (`None`: it found nothing), the first walk's first; the cursor
    /// moves to the last one kept.
    walk_ends: Vec<Option<Position>>,
    /// Committed events remain after the latest walk (see [`EventBatch::more_waiting`]).
    more_waiting: bool,
}

impl PgEventBatch {
    /// Walks up to `room` events from `next_walk_from`, below `watermark`.
    async fn walk(
        &mut self,
        watermark: &str,
        room: i64,
    ) -> Result<Vec<UnpublishedEvent>, StoreError> {
        let Some(from) = &self.next_walk_from else {
            return Ok(Vec::new());
        };
        let rows: Vec<WalkedEventRow> = sqlx::query_as(WALK_EVENTS)
            .bind(&from.xid)
            .bind(from.order_id)
            .bind(from.seq)
            .bind(watermark)
            .bind(room)
            .fetch_all(&mut *self.tx)
            .await?;
        self.more_waiting = if (rows.len() as i64) < room {
            sqlx::query_scalar(HELD_BACK)
                .bind(watermark)
                .fetch_one(&mut *self.tx)
                .await?
        } else {
            true
        };
        let mut end = None;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let event: UnpublishedEvent = row.event.into();
            end = Some(Position {
                xid: row.xid,
                order_id: event.order_id,
                seq: event.seq,
            });
            if !row.published {
                events.push(event);
            }
        }
        if let Some(end) = &end {
            self.next_walk_from = Some(end.clone());
        }
        self.walk_ends.push(end);
        Ok(events)
    }
}

#[async_trait]
impl EventBatch for PgEventBatch {
    fn events(&self) -> &[UnpublishedEvent] {
        &self.events
    }

    fn more_waiting(&self) -> bool {
        self.more_waiting
    }

    async fn walk_more(&mut self, limit: u32) -> Result<Vec<UnpublishedEvent>, StoreError> {
        if self.next_walk_from.is_none() {
            return Ok(Vec::new());
        }
        let watermark: String = sqlx::query_scalar(WATERMARK)
            .fetch_one(&mut *self.tx)
            .await?;
        self.walk(&watermark, i64::from(limit)).await
    }

    fn keep_walks(&mut self, walks: usize) {
        // The first walk is the claim's own, kept unless the whole batch is released.
        self.walk_ends.truncate(walks + 1);
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
            walk_ends,
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
        if let Some(end) = walk_ends.into_iter().flatten().next_back() {
            sqlx::query(MOVE_EVENT_CURSOR)
                .bind(end.xid)
                .bind(end.order_id)
                .bind(end.seq)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
