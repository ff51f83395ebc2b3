//! The Postgres placing write: the whole transaction as one statement (`UNNEST` for the lines),
//! one round trip, atomic by itself; it `NOTIFY`s the dispatchers at commit.

use sqlx::PgPool;

use super::{error::StoreError, statements::bind_order};
use crate::{convert::outbox_message, domain::model::NewOrder};

const PLACE_ORDER: &str = include_str!("sql/place_order.pg.sql");

/// Writes `order` with its lines, `PLACED` event and `PENDING` dispatch row; `false` (nothing
/// written) when its idempotency key exists.
pub(super) async fn place_order(pool: &PgPool, order: &NewOrder) -> Result<bool, StoreError> {
    let count = order.lines.len();
    let (mut line_nos, mut skus, mut names, mut quantities, mut unit_prices, mut totals) = (
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
    );
    for (line_no, line) in (1_i32..).zip(&order.lines) {
        line_nos.push(line_no);
        skus.push(line.sku.as_str());
        names.push(line.name.as_str());
        // Validation caps quantities at 10,000.
        quantities.push(i32::try_from(line.quantity).unwrap_or(i32::MAX));
        unit_prices.push(line.unit_price_minor);
        totals.push(line.line_total_minor);
    }
    let inserted = bind_order(sqlx::query(PLACE_ORDER), order)
        .bind(&line_nos)
        .bind(&skus)
        .bind(&names)
        .bind(&quantities)
        .bind(&unit_prices)
        .bind(&totals)
        .bind(&order.traceparent)
        .bind(&order.tracestate)
        .bind(outbox_message(order))
        .fetch_optional(pool)
        .await?;
    Ok(inserted.is_some())
}
