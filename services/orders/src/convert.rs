//! Domain ↔ protobuf conversions.

use prost::Message;
use waybill_proto::{time::to_timestamp, v1 as pb};

use crate::domain::model::{NewOrder, OrderRecord, StatusEvent};

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
        shipping_address: Some(pb::Address {
            line1: order.ship_to.line1.clone(),
            line2: order.ship_to.line2.clone(),
            city: order.ship_to.city.clone(),
            region: order.ship_to.region.clone(),
            postal_code: order.ship_to.postal_code.clone(),
            country_code: order.ship_to.country_code.clone(),
        }),
        lines: order
            .lines
            .iter()
            .map(|line| pb::OrderLine {
                sku: line.sku.clone(),
                name: line.name.clone(),
                quantity: line.quantity,
                unit_price: Some(money(line.unit_price_minor)),
                line_total: Some(money(line.line_total_minor)),
            })
            .collect(),
        total: Some(money(order.total_minor)),
        partner_id: order.partner_id().unwrap_or_default().to_owned(),
        tracking_id: order.tracking_id.clone().unwrap_or_default(),
        status_history: order.history.iter().map(event_to_proto).collect(),
        status: order.status().into(),
        placed_at: Some(to_timestamp(order.placed_at)),
        region: order.region.clone(),
    }
}

/// The protobuf form of a history event.
pub fn event_to_proto(event: &StatusEvent) -> pb::OrderStatusEvent {
    pb::OrderStatusEvent {
        order_id: event.order_id.to_string(),
        status: event.status.into(),
        occurred_at: Some(to_timestamp(event.occurred_at)),
        partner_id: event.partner_id.clone(),
        detail: event.detail.clone(),
        tracking_id: event.tracking_id.clone(),
        sequence: event.seq,
        recorded_at: Some(to_timestamp(event.recorded_at)),
        detail_code: event.detail_code.clone(),
        action_required: event.action_required,
        needs_review: event.needs_review,
    }
}

/// The order as partners receive it, encoded: a `DispatchedOrder` without the per-send fields
/// (partner, send count, reply-to, region). The placing transaction stores it in the outbox row;
/// the relay appends those fields to these bytes when it sends (protobuf merges concatenated
/// messages), so dispatching never reads the order tables.
pub fn outbox_message(order: &NewOrder) -> Vec<u8> {
    let money = |minor_units| pb::Money {
        currency_code: order.currency_code.clone(),
        minor_units,
    };
    pb::DispatchedOrder {
        order_id: order.id.to_string(),
        placed_at: Some(to_timestamp(order.placed_at)),
        ship_to: Some(pb::Address {
            line1: order.ship_to.line1.clone(),
            line2: order.ship_to.line2.clone(),
            city: order.ship_to.city.clone(),
            region: order.ship_to.region.clone(),
            postal_code: order.ship_to.postal_code.clone(),
            country_code: order.ship_to.country_code.clone(),
        }),
        lines: order
            .lines
            .iter()
            .map(|line| pb::OrderLine {
                sku: line.sku.clone(),
                name: line.name.clone(),
                quantity: line.quantity,
                unit_price: Some(money(line.unit_price_minor)),
                line_total: Some(money(line.line_total_minor)),
            })
            .collect(),
        total: Some(money(order.total_minor)),
        recipient: Some(pb::Recipient {
            name: order.customer.name.clone(),
            email: order.customer.email.clone(),
            phone: order.customer.phone.clone(),
        }),
        ..pb::DispatchedOrder::default()
    }
    .encode_to_vec()
}
