//! The SQLite placing write (the embedded default). SQLite has one writer at a time: the
//! placing transaction starts with its write so it takes the write lock at once (waiting on the
//! busy timeout) instead of failing on a read-to-write upgrade. The commit is announced on the
//! process's change feed (SQLite has no `NOTIFY`).

use sqlx::{QueryBuilder, Sqlite, SqlitePool};
use waybill_service_kit::db::{Change, ChangeFeed, Id, Instant, sqlite_write_turn};

use super::{error::StoreError, statements::bind_order};
use crate::{convert::outbox_message, domain::model::NewOrder};

const PLACE_ORDER: &str = include_str!("sql/place_order.sqlite.sql");
const PLACED_EVENT: &str = "INSERT INTO order_status_events \
                            (order_id, seq, status, occurred_at, recorded_at) \
                            VALUES ($1, 1, 'PLACED', $2, $2)";
const OUTBOX_ROW: &str = "INSERT INTO dispatch (order_id, state, next_attempt_at, traceparent, \
                          tracestate, message, created_at, updated_at) \
                          VALUES ($1, 'PENDING', $2, $3, $4, $5, $2, $2)";

/// Writes `order` with its lines, `PLACED` event and `PENDING` dispatch row in one transaction;
/// `false` (nothing written) when its idempotency key exists.
pub(super) async fn place_order(
    pool: &SqlitePool,
    feed: &ChangeFeed,
    order: &NewOrder,
) -> Result<bool, StoreError> {
    let id = Id(order.id);
    let placed_at = Instant(order.placed_at);
    // This process's writers take turns without SQLite's sleeping busy handler.
    let _turn = sqlite_write_turn(pool).await;
    let mut tx = waybill_service_kit::db::begin(pool).await?;
    let inserted = bind_order(sqlx::query(PLACE_ORDER), order)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if inserted == 0 {
        tx.rollback().await?;
        return Ok(false);
    }

    let mut lines = QueryBuilder::<Sqlite>::new(
        "INSERT INTO order_lines \
         (order_id, line_no, sku, name, quantity, unit_price_minor, line_total_minor) ",
    );
    lines.push_values((1_i64..).zip(&order.lines), |mut row, (line_no, line)| {
        row.push_bind(id)
            .push_bind(line_no)
            .push_bind(&line.sku)
            .push_bind(&line.name)
            .push_bind(i64::from(line.quantity))
            .push_bind(line.unit_price_minor)
            .push_bind(line.line_total_minor);
    });
    lines.build().execute(&mut *tx).await?;
    sqlx::query(PLACED_EVENT)
        .bind(id)
        .bind(placed_at)
        .execute(&mut *tx)
        .await?;
    sqlx::query(OUTBOX_ROW)
        .bind(id)
        .bind(placed_at)
        .bind(&order.traceparent)
        .bind(&order.tracestate)
        .bind(outbox_message(order))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    feed.publish(Change::Outbox);
    Ok(true)
}
