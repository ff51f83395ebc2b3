//! Outbox rows placed before the outbox carried its message (migration 0005) have none: their
//! message is built here from the order tables, encoded by [`waybill_proto::outbox`] as Orders
//! encodes it at placing since. Nothing
//! else reads the order tables on the way to a partner.

use std::collections::HashMap;

use uuid::Uuid;
use waybill_proto::{
    outbox::{StoredLine, StoredOrder},
    v1::{Address, Recipient},
};
use waybill_service_kit::{
    db::{Backend, Id, IdList, Instant, Statement, lines_of},
    on_pool,
};

use super::{error::StoreError, rows::ShipToRow};
use crate::domain::model::ShipTo;

const ORDERS: Statement = Statement {
    postgres: "SELECT id, placed_at, customer_name, customer_email, customer_phone, ship_line1, \
               ship_line2, ship_city, ship_region, ship_postal_code, ship_country_code, \
               currency_code, total_minor FROM orders WHERE id = ANY($1)",
    sqlite: "SELECT id, placed_at, customer_name, customer_email, customer_phone, ship_line1, \
             ship_line2, ship_city, ship_region, ship_postal_code, ship_country_code, \
             currency_code, total_minor FROM orders WHERE id IN (SELECT value FROM json_each($1))",
};

/// The columns of an order its message is built from.
#[derive(Debug, sqlx::FromRow)]
struct OrderRow {
    id: Id,
    placed_at: Instant,
    customer_name: String,
    customer_email: String,
    customer_phone: String,
    #[sqlx(flatten)]
    ship_to: ShipToRow,
    currency_code: String,
    total_minor: i64,
}

/// The encoded messages of `orders` (those without an order row are absent).
pub(super) async fn messages(
    db: &Backend,
    orders: &[Uuid],
) -> Result<HashMap<Uuid, Vec<u8>>, StoreError> {
    let ids = IdList(orders.to_vec());
    let rows: Vec<OrderRow> = on_pool!(db, ORDERS, |pool, sql| {
        sqlx::query_as(sql).bind(&ids).fetch_all(pool).await?
    });
    let mut lines = lines_of(db, orders).await?;
    rows.into_iter()
        .map(|row| {
            let id: Uuid = row.id.into();
            let lines = lines
                .remove(&id)
                .unwrap_or_default()
                .into_iter()
                .map(|line| {
                    Ok(StoredLine {
                        quantity: line.units().ok_or_else(|| {
                            StoreError::Corrupt(format!("bad quantity {}", line.quantity))
                        })?,
                        unit_price_minor: line.unit_price_minor,
                        line_total_minor: line.line_total_minor,
                        sku: line.sku,
                        name: line.name,
                    })
                })
                .collect::<Result<_, StoreError>>()?;
            let ship_to = ShipTo::from(row.ship_to);
            let message = StoredOrder {
                order_id: id.to_string(),
                placed_at: row.placed_at.into(),
                ship_to: Address {
                    line1: ship_to.line1,
                    line2: ship_to.line2,
                    city: ship_to.city,
                    region: ship_to.region,
                    postal_code: ship_to.postal_code,
                    country_code: ship_to.country_code,
                },
                lines,
                currency_code: row.currency_code,
                total_minor: row.total_minor,
                recipient: Recipient {
                    name: row.customer_name,
                    email: row.customer_email,
                    phone: row.customer_phone,
                },
            };
            Ok((id, message.stored_message()))
        })
        .collect()
}
