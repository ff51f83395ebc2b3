//! Domain ↔ protobuf conversions.

use waybill_proto::{
    history::HistoryEvent,
    outbox::{StoredLine, StoredOrder},
    time::to_timestamp,
    v1 as pb,
};

use crate::domain::model::{Address, NewOrder, OrderRecord, PricedLine, StatusEvent};

/// The protobuf form of a stored order.
pub fn order_to_proto(order: &OrderRecord) -> pb::Order {
    let money = |minor_units| pb::Money {
        currency_code: order.currency_code.clone(),
        minor_units,
    };
    pb::Order {
        id: order.id.to_string(),
        customer: Some(pb::Customer {
            id: order.customer.id.clone(),
            name: order.customer.name.clone(),
            email: order.customer.email.clone(),
            phone: order.customer.phone.clone(),
        }),
        shipping_address: Some(address_to_proto(&order.ship_to)),
        lines: lines_to_proto(&order.lines, &order.currency_code),
        total: Some(money(order.total_minor)),
        partner_id: order.partner_id().unwrap_or_default().to_owned(),
        tracking_id: order.tracking_id.clone().unwrap_or_default(),
        status_history: order.history.iter().map(event_to_proto).collect(),
        status: order.status().into(),
        placed_at: Some(to_timestamp(order.placed_at)),
        region: order.region.clone(),
    }
}

fn address_to_proto(address: &Address) -> pb::Address {
    pb::Address {
        line1: address.line1.clone(),
        line2: address.line2.clone(),
        city: address.city.clone(),
        region: address.region.clone(),
        postal_code: address.postal_code.clone(),
        country_code: address.country_code.clone(),
    }
}

fn lines_to_proto(lines: &[PricedLine], currency_code: &str) -> Vec<pb::OrderLine> {
    let money = |minor_units| pb::Money {
        currency_code: currency_code.to_owned(),
        minor_units,
    };
    lines
        .iter()
        .map(|line| pb::OrderLine {
            sku: line.sku.clone(),
            name: line.name.clone(),
            quantity: line.quantity,
            unit_price: Some(money(line.unit_price_minor)),
            line_total: Some(money(line.line_total_minor)),
        })
        .collect()
}

/// The protobuf form of a history event (encoded by the one history encoder,
/// [`waybill_proto::history`], which the order-events topic's publisher uses too).
pub fn event_to_proto(event: &StatusEvent) -> pb::OrderStatusEvent {
    HistoryEvent {
        order_id: event.order_id.to_string(),
        sequence: event.seq,
        status: event.status,
        partner_id: event.partner_id.clone(),
        detail: event.detail.clone(),
        tracking_id: event.tracking_id.clone(),
        occurred_at: event.occurred_at,
        recorded_at: event.recorded_at,
        detail_code: event.detail_code.clone(),
        action_required: event.action_required,
        needs_review: event.needs_review,
    }
    .to_proto()
}

/// The order as partners receive it, encoded: a `DispatchedOrder` without the per-send fields
/// (partner, send count, reply-to, region), by [`waybill_proto::outbox`]. The placing
/// transaction stores it in the outbox row; the relay appends those fields to these bytes when
/// it sends, so dispatching never reads the order tables.
pub fn outbox_message(order: &NewOrder) -> Vec<u8> {
    StoredOrder {
        order_id: order.id.to_string(),
        placed_at: order.placed_at,
        ship_to: address_to_proto(&order.ship_to),
        lines: order
            .lines
            .iter()
            .map(|line| StoredLine {
                sku: line.sku.clone(),
                name: line.name.clone(),
                quantity: line.quantity,
                unit_price_minor: line.unit_price_minor,
                line_total_minor: line.line_total_minor,
            })
            .collect(),
        currency_code: order.currency_code.clone(),
        total_minor: order.total_minor,
        recipient: pb::Recipient {
            name: order.customer.name.clone(),
            email: order.customer.email.clone(),
            phone: order.customer.phone.clone(),
        },
    }
    .stored_message()
}
