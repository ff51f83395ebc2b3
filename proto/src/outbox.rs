//! The partner message, one owner for its bytes (`waybill.v1.DispatchedOrder`):
//!
//! - [`StoredOrder::stored_message`]: the message as the outbox stores it, the order's own fields and
//!   none of the per-send ones. Orders writes it at placing; the dispatcher rebuilds it the same
//!   way for rows placed before the outbox carried it.
//! - [`with_per_send`]: those bytes with the per-send fields (partner, send count, reply-to,
//!   region) appended, what the relay produces. Protobuf merges concatenated messages, so the
//!   partner decodes one `DispatchedOrder` with every field, and the order's own fields are
//!   never decoded and encoded again on the way.
//! - [`RoutingView::read`]: what routing and the audit rule read from the stored bytes (the
//!   destination and the total), every other field skipped.
//! - [`decode`]: a received payload, every field (the connector SDK).

use chrono::{DateTime, Utc};
use prost::Message;

use crate::{
    time::to_timestamp,
    v1::{Address, DispatchedOrder, Money, OrderLine, Recipient},
};

/// An order's own fields: everything the stored message holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOrder {
    /// The order id.
    pub order_id: String,
    /// When it was placed.
    pub placed_at: DateTime<Utc>,
    /// Where it ships to.
    pub ship_to: Address,
    /// Its lines, in line order.
    pub lines: Vec<StoredLine>,
    /// The currency of every amount (ISO 4217).
    pub currency_code: String,
    /// The order total, minor units.
    pub total_minor: i64,
    /// The customer contact the partner needs to deliver.
    pub recipient: Recipient,
}

/// One line of a [`StoredOrder`]; amounts in the order's currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLine {
    /// Catalog SKU.
    pub sku: String,
    /// Catalog name at ordering time.
    pub name: String,
    /// Units ordered.
    pub quantity: u32,
    /// Price of one unit, minor units.
    pub unit_price_minor: i64,
    /// `unit_price_minor × quantity`.
    pub line_total_minor: i64,
}

impl StoredOrder {
    /// The stored message: a `DispatchedOrder` without the per-send fields.
    pub fn stored_message(&self) -> Vec<u8> {
        let money = |minor_units| Money {
            currency_code: self.currency_code.clone(),
            minor_units,
        };
        DispatchedOrder {
            order_id: self.order_id.clone(),
            placed_at: Some(to_timestamp(self.placed_at)),
            ship_to: Some(self.ship_to.clone()),
            lines: self
                .lines
                .iter()
                .map(|line| OrderLine {
                    sku: line.sku.clone(),
                    name: line.name.clone(),
                    quantity: line.quantity,
                    unit_price: Some(money(line.unit_price_minor)),
                    line_total: Some(money(line.line_total_minor)),
                })
                .collect(),
            total: Some(money(self.total_minor)),
            recipient: Some(self.recipient.clone()),
            ..DispatchedOrder::default()
        }
        .encode_to_vec()
    }
}

/// What each send of an order adds to its stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerSend<'a> {
    /// The partner this copy is for.
    pub partner_id: &'a str,
    /// 1 for the first send; higher when re-sent.
    pub send_count: i32,
    /// The StatusIngest address to report to.
    pub reply_to: &'a str,
    /// The Waybill region that sends it.
    pub region: &'a str,
}

/// The payload of one send: `stored` (from [`StoredOrder::stored_message`]) with `per_send` appended.
pub fn with_per_send(stored: &[u8], per_send: &PerSend<'_>) -> Vec<u8> {
    let appended = DispatchedOrder {
        reply_to: per_send.reply_to.to_owned(),
        region: per_send.region.to_owned(),
        partner_id: per_send.partner_id.to_owned(),
        send_count: per_send.send_count,
        ..DispatchedOrder::default()
    };
    let mut payload = Vec::with_capacity(stored.len() + appended.encoded_len());
    payload.extend_from_slice(stored);
    payload.extend_from_slice(&appended.encode_to_vec());
    payload
}

/// The fields of a stored (or sent) `DispatchedOrder` that routing and the audit rule read,
/// decoded without the rest (lines, recipient): the same field numbers, every other field
/// skipped. A unit test holds it to `kafka.proto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoutingView {
    /// Where the order ships to (`DispatchedOrder.ship_to`).
    #[prost(message, optional, tag = "3")]
    pub ship_to: Option<Address>,
    /// The order total (`DispatchedOrder.total`).
    #[prost(message, optional, tag = "5")]
    pub total: Option<Money>,
}

impl RoutingView {
    /// Reads the view from a stored message.
    pub fn read(message: &[u8]) -> Result<Self, prost::DecodeError> {
        Self::decode(message)
    }
}

/// A received payload, every field.
pub fn decode(payload: &[u8]) -> Result<DispatchedOrder, prost::DecodeError> {
    DispatchedOrder::decode(payload)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;
    use crate::test_support::{field_numbers, fields_present};

    fn order() -> StoredOrder {
        StoredOrder {
            order_id: "0190d6a4-0000-7000-8000-000000000001".to_owned(),
            placed_at: DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap(),
            ship_to: Address {
                line1: "1 Main St".to_owned(),
                line2: "Flat 2".to_owned(),
                city: "Berlin".to_owned(),
                region: "BE".to_owned(),
                postal_code: "10115".to_owned(),
                country_code: "DE".to_owned(),
            },
            lines: vec![
                StoredLine {
                    sku: "SKU-1".to_owned(),
                    name: "Kettle".to_owned(),
                    quantity: 2,
                    unit_price_minor: 1_500,
                    line_total_minor: 3_000,
                },
                StoredLine {
                    sku: "SKU-2".to_owned(),
                    name: "Mug".to_owned(),
                    quantity: 1,
                    unit_price_minor: 450,
                    line_total_minor: 450,
                },
            ],
            currency_code: "EUR".to_owned(),
            total_minor: 3_450,
            recipient: Recipient {
                name: "Ada Lovelace".to_owned(),
                email: "ada@example.com".to_owned(),
                phone: "+49 30 1234567".to_owned(),
            },
        }
    }

    const PER_SEND: PerSend<'static> = PerSend {
        partner_id: "acme",
        send_count: 2,
        reply_to: "http://ingest.eu.example:50053",
        region: "eu",
    };

    #[test]
    fn stored_plus_per_send_decodes_to_every_field() {
        let order = order();
        let payload = with_per_send(&order.stored_message(), &PER_SEND);
        let eur = |minor_units| {
            Some(Money {
                currency_code: "EUR".to_owned(),
                minor_units,
            })
        };
        // Every field named (no `..default()`): a field added to kafka.proto fails to compile
        // here until it is filled.
        let expected = DispatchedOrder {
            order_id: order.order_id.clone(),
            placed_at: Some(to_timestamp(order.placed_at)),
            ship_to: Some(order.ship_to.clone()),
            lines: vec![
                OrderLine {
                    sku: "SKU-1".to_owned(),
                    name: "Kettle".to_owned(),
                    quantity: 2,
                    unit_price: eur(1_500),
                    line_total: eur(3_000),
                },
                OrderLine {
                    sku: "SKU-2".to_owned(),
                    name: "Mug".to_owned(),
                    quantity: 1,
                    unit_price: eur(450),
                    line_total: eur(450),
                },
            ],
            total: eur(3_450),
            recipient: Some(order.recipient.clone()),
            reply_to: PER_SEND.reply_to.to_owned(),
            region: PER_SEND.region.to_owned(),
            partner_id: PER_SEND.partner_id.to_owned(),
            send_count: PER_SEND.send_count,
        };
        assert_eq!(decode(&payload).unwrap(), expected);
        assert_eq!(
            fields_present(&payload),
            field_numbers("DispatchedOrder").into_values().collect(),
            "every field of kafka.proto's DispatchedOrder travels"
        );
    }

    #[test]
    fn the_stored_message_holds_no_per_send_field() {
        let stored = decode(&order().stored_message()).unwrap();
        assert_eq!(
            (
                stored.reply_to.as_str(),
                stored.region.as_str(),
                stored.partner_id.as_str(),
                stored.send_count
            ),
            ("", "", "", 0)
        );
        let numbers = field_numbers("DispatchedOrder");
        let per_send: BTreeSet<u32> = ["reply_to", "region", "partner_id", "send_count"]
            .iter()
            .map(|name| numbers[*name])
            .collect();
        assert!(fields_present(&order().stored_message()).is_disjoint(&per_send));
    }

    #[test]
    fn a_resend_appends_to_the_same_stored_bytes() {
        let stored = order().stored_message();
        let first = with_per_send(&stored, &PER_SEND);
        let again = with_per_send(
            &stored,
            &PerSend {
                send_count: 3,
                ..PER_SEND
            },
        );
        assert!(first.starts_with(&stored) && again.starts_with(&stored));
        assert_eq!(decode(&again).unwrap().send_count, 3);
    }

    #[test]
    fn the_routing_view_reads_a_stored_or_sent_message_as_the_whole_message_would() {
        let order = order();
        for bytes in [
            order.stored_message(),
            with_per_send(&order.stored_message(), &PER_SEND),
        ] {
            let whole = decode(&bytes).unwrap();
            let view = RoutingView::read(&bytes).unwrap();
            assert_eq!((view.ship_to, view.total), (whole.ship_to, whole.total));
        }
    }

    #[test]
    fn the_routing_view_has_kafka_protos_field_numbers() {
        let numbers = field_numbers("DispatchedOrder");
        let view = RoutingView {
            ship_to: Some(order().ship_to),
            total: Some(Money::default()),
        };
        assert_eq!(
            fields_present(&view.encode_to_vec()),
            BTreeSet::from([numbers["ship_to"], numbers["total"]])
        );
    }
}
