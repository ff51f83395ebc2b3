//! What both placing writes share (`postgres.rs`, `sqlite.rs`): the order's own columns, bound
//! alike.

use sqlx::{Database as SqlxDatabase, Encode, Type, query::Query};
use waybill_service_kit::db::{Id, Instant};

use crate::domain::model::NewOrder;

/// Binds the order's own columns, `$1` to `$17` of both backends' placing statement.
pub(super) fn bind_order<'q, DB>(
    query: Query<'q, DB, <DB as SqlxDatabase>::Arguments<'q>>,
    order: &'q NewOrder,
) -> Query<'q, DB, <DB as SqlxDatabase>::Arguments<'q>>
where
    DB: SqlxDatabase,
    Id: Encode<'q, DB> + Type<DB>,
    Instant: Encode<'q, DB> + Type<DB>,
    &'q str: Encode<'q, DB> + Type<DB>,
    &'q [u8]: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
{
    query
        .bind(Id(order.id))
        .bind(order.idempotency_key.as_str())
        .bind(order.request_hash.as_slice())
        .bind(order.customer.id.as_str())
        .bind(order.customer.name.as_str())
        .bind(order.customer.email.as_str())
        .bind(order.customer.phone.as_str())
        .bind(order.ship_to.line1.as_str())
        .bind(order.ship_to.line2.as_str())
        .bind(order.ship_to.city.as_str())
        .bind(order.ship_to.region.as_str())
        .bind(order.ship_to.postal_code.as_str())
        .bind(order.ship_to.country_code.as_str())
        .bind(order.currency_code.as_str())
        .bind(order.total_minor)
        .bind(order.region.as_str())
        .bind(Instant(order.placed_at))
}
