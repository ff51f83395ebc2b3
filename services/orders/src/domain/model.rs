//! An accepted order and its parts, as the store writes and reads them.

use chrono::{DateTime, Utc};
use uuid::Uuid;
use waybill_proto::v1::OrderStatus;

/// Who ordered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    /// The storefront's customer id.
    pub id: String,
    /// Full name.
    pub name: String,
    /// Contact e-mail.
    pub email: String,
    /// Contact phone; may be empty.
    pub phone: String,
}

/// Where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Street and number.
    pub line1: String,
    /// Optional second line.
    pub line2: String,
    /// City.
    pub city: String,
    /// State or province; may be empty.
    pub region: String,
    /// Postal code; may be empty where a country has none.
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, upper case.
    pub country_code: String,
}

/// One line priced from the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedLine {
    /// Catalog SKU.
    pub sku: String,
    /// Catalog name at the time of ordering.
    pub name: String,
    /// 1 to 10,000.
    pub quantity: u32,
    /// Catalog unit price in minor units.
    pub unit_price_minor: i64,
    /// `unit_price_minor × quantity`.
    pub line_total_minor: i64,
}

/// A catalog entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogItem {
    /// Stock keeping unit, the catalog key.
    pub sku: String,
    /// Human-readable name.
    pub name: String,
    /// Price of one unit in minor units.
    pub unit_price_minor: i64,
    /// ISO 4217 code.
    pub currency_code: String,
    /// Inactive items cannot be ordered.
    pub active: bool,
}

/// Everything the placing transaction writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// Assigned by the service (UUIDv7: time-ordered, so inserts stay index-friendly).
    pub id: Uuid,
    /// The caller's idempotency key.
    pub idempotency_key: String,
    /// SHA-256 of the canonical request; a replay must match it.
    pub request_hash: Vec<u8>,
    /// Who ordered.
    pub customer: Customer,
    /// Where it goes.
    pub ship_to: Address,
    /// Priced lines, in request order.
    pub lines: Vec<PricedLine>,
    /// The order's single currency.
    pub currency_code: String,
    /// Sum of the line totals.
    pub total_minor: i64,
    /// The Waybill region placing it.
    pub region: String,
    /// When it was placed (the service's clock).
    pub placed_at: DateTime<Utc>,
    /// W3C `traceparent` of the placing request; the relay continues this trace.
    pub traceparent: String,
    /// W3C `tracestate`.
    pub tracestate: String,
}

/// One entry of an order's status history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEvent {
    /// The order.
    pub order_id: Uuid,
    /// Position in the order's history, from 1.
    pub seq: i64,
    /// What happened.
    pub status: OrderStatus,
    /// The partner involved; empty for PLACED.
    pub partner_id: String,
    /// Text for people.
    pub detail: String,
    /// Tracking id reported with the event; may be empty.
    pub tracking_id: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// When Waybill recorded it.
    pub recorded_at: DateTime<Utc>,
    /// Partner reports: machine-readable reason (`ADDRESS_NOT_FOUND`); empty when none.
    pub detail_code: String,
    /// Partner reports: someone must act.
    pub action_required: bool,
    /// Reported after the order reached a final state: kept for operators, changed nothing.
    pub needs_review: bool,
}

/// A stored order with its lines and history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    /// Order id.
    pub id: Uuid,
    /// Who ordered.
    pub customer: Customer,
    /// Where it goes.
    pub ship_to: Address,
    /// Priced lines in order.
    pub lines: Vec<PricedLine>,
    /// The order's currency.
    pub currency_code: String,
    /// Total in minor units.
    pub total_minor: i64,
    /// Owning region.
    pub region: String,
    /// The partner's tracking id, once reported.
    pub tracking_id: Option<String>,
    /// When it was placed.
    pub placed_at: DateTime<Utc>,
    /// Oldest first.
    pub history: Vec<StatusEvent>,
}

impl OrderRecord {
    /// Where the order stands: what its history adds up to by the status contract
    /// ([`waybill_proto::status::current`], the rule StatusIngest keeps `orders.status` by) —
    /// not its latest event, which may be a late report (RECEIVED after SHIPPED) or one
    /// recorded after delivery for review. PLACED for an empty history.
    pub fn status(&self) -> OrderStatus {
        waybill_proto::status::current(
            self.history
                .iter()
                .map(|event| (event.status, event.needs_review)),
        )
    }

    /// The partner the order is with: the one its latest event naming a partner names (the
    /// relay's SENT_TO_PARTNER, or the partner's own report), unless that event is the
    /// partner's refusal — then the order is back in routing and with nobody.
    pub fn partner_id(&self) -> Option<&str> {
        let event = self
            .history
            .iter()
            .rev()
            .find(|event| !event.partner_id.is_empty())?;
        (event.status != OrderStatus::RejectedByPartner).then_some(event.partner_id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_history(events: &[(OrderStatus, &str)]) -> OrderRecord {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        OrderRecord {
            id: Uuid::nil(),
            customer: Customer {
                id: "c1".to_owned(),
                name: "Ada".to_owned(),
                email: "ada@example.com".to_owned(),
                phone: String::new(),
            },
            ship_to: Address {
                line1: "1 Main St".to_owned(),
                line2: String::new(),
                city: "Berlin".to_owned(),
                region: String::new(),
                postal_code: "10115".to_owned(),
                country_code: "DE".to_owned(),
            },
            lines: Vec::new(),
            currency_code: "EUR".to_owned(),
            total_minor: 0,
            region: "local".to_owned(),
            tracking_id: None,
            placed_at: at,
            history: (1..)
                .zip(events)
                .map(|(seq, (status, partner))| StatusEvent {
                    order_id: Uuid::nil(),
                    seq,
                    status: *status,
                    partner_id: (*partner).to_owned(),
                    detail: String::new(),
                    tracking_id: String::new(),
                    occurred_at: at,
                    recorded_at: at,
                    detail_code: String::new(),
                    action_required: false,
                    needs_review: false,
                })
                .collect(),
        }
    }

    #[test]
    fn the_partner_is_the_latest_one_named_unless_it_refused_the_order() {
        use OrderStatus::*;
        assert_eq!(with_history(&[(Placed, "")]).partner_id(), None);
        let sent = [(Placed, ""), (SentToPartner, "a")];
        assert_eq!(with_history(&sent).partner_id(), Some("a"));
        // The partner's report landed before the relay recorded its send: no SENT event.
        let reported_first = [(Placed, ""), (ReceivedByPartner, "a")];
        assert_eq!(with_history(&reported_first).partner_id(), Some("a"));
        let refused = [(Placed, ""), (SentToPartner, "a"), (RejectedByPartner, "a")];
        assert_eq!(with_history(&refused).partner_id(), None);
        let rerouted = [
            (Placed, ""),
            (SentToPartner, "a"),
            (RejectedByPartner, "a"),
            (SentToPartner, "b"),
            (ReceivedByPartner, "b"),
        ];
        let order = with_history(&rerouted);
        assert_eq!(order.partner_id(), Some("b"));
        assert_eq!(order.status(), ReceivedByPartner);
    }

    #[test]
    fn the_status_is_where_the_history_got_to_not_its_latest_event() {
        use OrderStatus::*;
        // A late RECEIVED after SHIPPED leaves the customer at SHIPPED.
        let late = [
            (Placed, ""),
            (SentToPartner, "a"),
            (Shipped, "a"),
            (ReceivedByPartner, "a"),
        ];
        assert_eq!(with_history(&late).status(), Shipped);
        // The relay's SENT recorded after the partner's RECEIVED.
        let overtaken = [(Placed, ""), (ReceivedByPartner, "a"), (SentToPartner, "a")];
        assert_eq!(with_history(&overtaken).status(), ReceivedByPartner);
        // After DELIVERED a report is kept for review and changes nothing.
        let mut delivered = with_history(&[(Placed, ""), (Delivered, "a"), (Exception, "a")]);
        delivered.history[2].needs_review = true;
        assert_eq!(delivered.status(), Delivered);
    }
}
