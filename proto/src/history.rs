//! The history event, one owner for its encoding (`waybill.v1.OrderStatusEvent`): Orders shows
//! it in `GetOrder`, `ListOrders` and `WatchOrder` ([`HistoryEvent::to_proto`]), and the
//! dispatcher's publisher puts it on the order-events topic ([`HistoryEvent::order_event`]), so a
//! subscriber of the topic sees every field a customer's `WatchOrder` does.

use chrono::{DateTime, Utc};
use prost::Message;

use crate::{
    time::to_timestamp,
    v1::{OrderEvent, OrderStatus, OrderStatusEvent},
};

/// One entry of an order's history: every field of `OrderStatusEvent`, as the services hold it
/// (a row of `order_status_events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEvent {
    /// The order id.
    pub order_id: String,
    /// Position in the order's history.
    pub sequence: i64,
    /// What happened.
    pub status: OrderStatus,
    /// The partner involved; empty for `PLACED`.
    pub partner_id: String,
    /// Text for people.
    pub detail: String,
    /// Tracking id reported with this event; may be empty.
    pub tracking_id: String,
    /// When it happened (the partner's clock for partner reports).
    pub occurred_at: DateTime<Utc>,
    /// When Waybill recorded it.
    pub recorded_at: DateTime<Utc>,
    /// Machine-readable reason of a partner report; may be empty.
    pub detail_code: String,
    /// Someone must act (partner reports).
    pub action_required: bool,
    /// Arrived after the order's final state: kept for operators, changed nothing.
    pub needs_review: bool,
}

/// Who an order-events record is about, beside the event itself (`OrderEvent`'s other fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventAudience<'a> {
    /// The storefront's customer id.
    pub customer_id: &'a str,
    /// The customer's e-mail address.
    pub customer_email: &'a str,
    /// The Waybill region of the order.
    pub region: &'a str,
}

impl HistoryEvent {
    /// The protobuf form, every field filled.
    pub fn to_proto(&self) -> OrderStatusEvent {
        OrderStatusEvent {
            order_id: self.order_id.clone(),
            status: self.status.into(),
            occurred_at: Some(to_timestamp(self.occurred_at)),
            partner_id: self.partner_id.clone(),
            detail: self.detail.clone(),
            tracking_id: self.tracking_id.clone(),
            sequence: self.sequence,
            recorded_at: Some(to_timestamp(self.recorded_at)),
            detail_code: self.detail_code.clone(),
            action_required: self.action_required,
            needs_review: self.needs_review,
        }
    }

    /// The order-events record for this event, encoded (`OrderEvent`).
    pub fn order_event(&self, audience: EventAudience<'_>) -> Vec<u8> {
        OrderEvent {
            order_id: self.order_id.clone(),
            event: Some(self.to_proto()),
            customer_id: audience.customer_id.to_owned(),
            customer_email: audience.customer_email.to_owned(),
            region: audience.region.to_owned(),
        }
        .encode_to_vec()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_support::{field_numbers, fields_present};

    /// Every field set to something other than its default.
    fn event() -> HistoryEvent {
        HistoryEvent {
            order_id: "0190d6a4-0000-7000-8000-000000000001".to_owned(),
            sequence: 4,
            status: OrderStatus::Exception,
            partner_id: "acme".to_owned(),
            detail: "address not found".to_owned(),
            tracking_id: "TRK-1".to_owned(),
            occurred_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            recorded_at: DateTime::from_timestamp(1_700_000_001, 500_000_000).unwrap(),
            detail_code: "ADDRESS_NOT_FOUND".to_owned(),
            action_required: true,
            needs_review: true,
        }
    }

    #[test]
    fn every_field_of_the_event_is_filled() {
        let encoded = event().to_proto().encode_to_vec();
        assert_eq!(
            fields_present(&encoded),
            field_numbers("OrderStatusEvent").into_values().collect(),
            "every field of common.proto's OrderStatusEvent"
        );
    }

    #[test]
    fn the_order_events_record_carries_the_whole_event() {
        let event = event();
        let audience = EventAudience {
            customer_id: "c-1",
            customer_email: "ada@example.com",
            region: "eu",
        };
        let bytes = event.order_event(audience);
        assert_eq!(
            fields_present(&bytes),
            field_numbers("OrderEvent").into_values().collect(),
            "every field of kafka.proto's OrderEvent"
        );
        let decoded = OrderEvent::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            decoded,
            OrderEvent {
                order_id: event.order_id.clone(),
                event: Some(event.to_proto()),
                customer_id: "c-1".to_owned(),
                customer_email: "ada@example.com".to_owned(),
                region: "eu".to_owned(),
            }
        );
    }
}
