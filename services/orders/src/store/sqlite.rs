//! The SQLite placing write (the embedded default). SQLite has one writer at a time: the
//! placing transaction starts with its write so it takes the write lock at once (waiting on the
//! busy timeout) instead of failing on a read-to-write upgrade. The commit is announced on the
//! process's change feed (SQLite has no `NOTIFY`).

use sqlx::SqlitePool;
use waybill_service_kit::db::{Change, ChangeFeed, sqlite_write_turn};

use super::{error::StoreError, statements::bind_order};
use crate::{convert::outbox_message, domain::model::NewOrder};

/// The whole placing write as one query: the order (`place_order.sqlite.sql`, `$1`–`$17`), then
/// its lines, `PLACED` event and outbox row (`place_rest.sqlite.sql`, each only if the order was
/// written). sqlx runs the statements of one query on its SQLite thread in one hand-off.
const PLACE_ORDER: &str = concat!(
    include_str!("sql/place_order.sqlite.sql"),
    ";\n",
    include_str!("sql/place_rest.sqlite.sql")
);

/// Writes `order` with its lines, `PLACED` event and `PENDING` dispatch row in one transaction;
/// `false` (nothing written) when its idempotency key exists.
pub(super) async fn place_order(
    pool: &SqlitePool,
    feed: &ChangeFeed,
    order: &NewOrder,
) -> Result<bool, StoreError> {
    let lines = serde_json::Value::Array(
        order
            .lines
            .iter()
            .map(|line| {
                serde_json::json!({
                    "sku": line.sku,
                    "name": line.name,
                    "quantity": line.quantity,
                    "unit_price_minor": line.unit_price_minor,
                    "line_total_minor": line.line_total_minor,
                })
            })
            .collect(),
    )
    .to_string();
    let message = outbox_message(order);
    // This process's writers take turns without SQLite's sleeping busy handler.
    let _turn = sqlite_write_turn(pool).await;
    let mut tx = waybill_service_kit::db::begin(pool).await?;
    let written = bind_order(sqlx::query(PLACE_ORDER), order)
        .bind(lines.as_str())
        .bind(order.traceparent.as_str())
        .bind(order.tracestate.as_str())
        .bind(message.as_slice())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if written == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    tx.commit().await?;
    feed.publish(Change::Outbox);
    Ok(true)
}
