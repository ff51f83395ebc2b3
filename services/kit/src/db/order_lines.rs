//! The lines of orders, read alike by every service (the `order_lines` table is part of the
//! shared schema): one statement per backend, one row shape, one grouping by order.

use std::collections::HashMap;

use uuid::Uuid;

use super::{
    backend::{Backend, Statement},
    value::{Id, IdList},
};
use crate::on_pool;

const ORDER_LINES: Statement = Statement {
    postgres: "SELECT order_id, sku, name, quantity, unit_price_minor, line_total_minor \
               FROM order_lines WHERE order_id = ANY($1) ORDER BY order_id, line_no",
    sqlite: "SELECT order_id, sku, name, quantity, unit_price_minor, line_total_minor \
             FROM order_lines WHERE order_id IN (SELECT value FROM json_each($1)) \
             ORDER BY order_id, line_no",
};

/// One line of an order as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderLineRow {
    /// The order.
    pub order_id: Id,
    /// Catalog SKU.
    pub sku: String,
    /// Catalog name at ordering time.
    pub name: String,
    /// Units ordered (positive by the table's CHECK rule).
    pub quantity: i32,
    /// Price of one unit, minor units.
    pub unit_price_minor: i64,
    /// `unit_price_minor × quantity`.
    pub line_total_minor: i64,
}

impl OrderLineRow {
    /// The quantity as a count; `None` if the stored value is negative (a corrupt row).
    pub fn units(&self) -> Option<u32> {
        u32::try_from(self.quantity).ok()
    }
}

/// The lines of `orders`, by order, each order's in line order (orders without lines are
/// absent). One query for all of them.
pub async fn lines_of(
    backend: &Backend,
    orders: &[Uuid],
) -> Result<HashMap<Uuid, Vec<OrderLineRow>>, sqlx::Error> {
    let mut by_order: HashMap<Uuid, Vec<OrderLineRow>> = HashMap::new();
    if orders.is_empty() {
        return Ok(by_order);
    }
    let ids = IdList(orders.to_vec());
    let rows: Vec<OrderLineRow> = on_pool!(backend, ORDER_LINES, |pool, sql| {
        sqlx::query_as(sql).bind(&ids).fetch_all(pool).await?
    });
    for row in rows {
        by_order.entry(row.order_id.into()).or_default().push(row);
    }
    Ok(by_order)
}
