//! One `FromRow` struct per row shape, decoded alike on both backends (ids and instants through
//! the kit's [`Id`] and [`Instant`]), and its conversion to the domain record.

use std::collections::HashMap;

use uuid::Uuid;
use waybill_proto::v1::OrderStatus;
use waybill_service_kit::db::{Id, Instant, OrderLineRow};

use super::error::StoreError;
use crate::domain::model::{Address, CatalogItem, Customer, OrderRecord, PricedLine, StatusEvent};

/// An order (lines and history are read separately).
#[derive(Debug, sqlx::FromRow)]
pub(super) struct OrderRow {
    id: Id,
    customer_id: String,
    customer_name: String,
    customer_email: String,
    customer_phone: String,
    ship_line1: String,
    ship_line2: String,
    ship_city: String,
    ship_region: String,
    ship_postal_code: String,
    ship_country_code: String,
    currency_code: String,
    total_minor: i64,
    region: String,
    tracking_id: Option<String>,
    placed_at: Instant,
}

impl OrderRow {
    /// The order's id.
    pub(super) fn id(&self) -> Uuid {
        self.id.into()
    }
}

impl From<OrderRow> for OrderRecord {
    fn from(row: OrderRow) -> Self {
        Self {
            id: row.id.into(),
            customer: Customer {
                id: row.customer_id,
                name: row.customer_name,
                email: row.customer_email,
                phone: row.customer_phone,
            },
            ship_to: Address {
                line1: row.ship_line1,
                line2: row.ship_line2,
                city: row.ship_city,
                region: row.ship_region,
                postal_code: row.ship_postal_code,
                country_code: row.ship_country_code,
            },
            lines: Vec::new(),
            currency_code: row.currency_code,
            total_minor: row.total_minor,
            region: row.region,
            tracking_id: row.tracking_id,
            placed_at: row.placed_at.into(),
            history: Vec::new(),
        }
    }
}

/// One history event.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct EventRow {
    order_id: Id,
    seq: i64,
    status: String,
    partner_id: String,
    detail: String,
    tracking_id: String,
    occurred_at: Instant,
    recorded_at: Instant,
    detail_code: String,
    action_required: bool,
    needs_review: bool,
}

impl TryFrom<EventRow> for StatusEvent {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Self, StoreError> {
        Ok(Self {
            order_id: row.order_id.into(),
            seq: row.seq,
            status: OrderStatus::from_short_name(&row.status).ok_or_else(|| {
                StoreError::Corrupt(format!("unknown order status {:?}", row.status))
            })?,
            partner_id: row.partner_id,
            detail: row.detail,
            tracking_id: row.tracking_id,
            occurred_at: row.occurred_at.into(),
            recorded_at: row.recorded_at.into(),
            detail_code: row.detail_code,
            action_required: row.action_required,
            needs_review: row.needs_review,
        })
    }
}

/// A catalog entry.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct CatalogRow {
    sku: String,
    name: String,
    unit_price_minor: i64,
    currency_code: String,
    active: bool,
}

impl From<CatalogRow> for CatalogItem {
    fn from(row: CatalogRow) -> Self {
        Self {
            sku: row.sku,
            name: row.name,
            unit_price_minor: row.unit_price_minor,
            currency_code: row.currency_code,
            active: row.active,
        }
    }
}

/// The order an idempotency key belongs to.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct KeyOwnerRow {
    pub(super) id: Id,
    pub(super) request_hash: Vec<u8>,
}

/// Gives each order its lines and history (`events` in order).
pub(super) fn assemble(
    orders: Vec<OrderRow>,
    mut lines_of: HashMap<Uuid, Vec<OrderLineRow>>,
    events: Vec<EventRow>,
) -> Result<Vec<OrderRecord>, StoreError> {
    let mut history_of: HashMap<Uuid, Vec<StatusEvent>> = HashMap::new();
    for row in events {
        let event = StatusEvent::try_from(row)?;
        history_of.entry(event.order_id).or_default().push(event);
    }
    orders
        .into_iter()
        .map(|row| {
            let mut order = OrderRecord::from(row);
            order.lines = lines_of
                .remove(&order.id)
                .unwrap_or_default()
                .into_iter()
                .map(|line| {
                    Ok(PricedLine {
                        quantity: line.units().ok_or_else(|| {
                            StoreError::Corrupt(format!("bad quantity {}", line.quantity))
                        })?,
                        sku: line.sku,
                        name: line.name,
                        unit_price_minor: line.unit_price_minor,
                        line_total_minor: line.line_total_minor,
                    })
                })
                .collect::<Result<_, StoreError>>()?;
            order.history = history_of.remove(&order.id).unwrap_or_default();
            Ok(order)
        })
        .collect()
}
