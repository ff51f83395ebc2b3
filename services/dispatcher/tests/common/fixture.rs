//! Orders for the relay's tests, placed through the Orders store itself (the placing write
//! `PlaceOrder` runs: order, lines, `PLACED` event and `PENDING` dispatch row in one
//! transaction), so the outbox rows are exactly what production writes.

use chrono::{DateTime, Utc};
use uuid::Uuid;
use waybill_orders::{
    domain::model::{Address, Customer, NewOrder, PricedLine},
    store::{OrderStore, SqlOrderStore},
};
use waybill_service_kit::db::Database;

/// One order to place: a single line, priced so that the total is `total_minor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureOrder {
    pub id: Uuid,
    pub country_code: String,
    pub region: String,
    pub postal_code: String,
    pub currency_code: String,
    pub total_minor: i64,
    /// Placing time (the dispatch row is due then).
    pub placed_at: DateTime<Utc>,
    /// W3C trace context of the "placing request".
    pub traceparent: String,
}

impl FixtureOrder {
    /// An order to `country_code` worth `total_minor` USD cents, placed at `placed_at`.
    pub fn new(country_code: &str, total_minor: i64, placed_at: DateTime<Utc>) -> Self {
        Self {
            id: Uuid::new_v4(),
            country_code: country_code.to_owned(),
            region: String::new(),
            postal_code: "10115".to_owned(),
            currency_code: "USD".to_owned(),
            total_minor,
            placed_at,
            traceparent: format!(
                "00-{}-{}-01",
                Uuid::new_v4().simple(),
                &Uuid::new_v4().simple().to_string()[..16]
            ),
        }
    }

    fn to_new_order(&self) -> NewOrder {
        NewOrder {
            id: self.id,
            idempotency_key: self.id.to_string(),
            request_hash: vec![0; 32],
            customer: Customer {
                id: "customer-1".to_owned(),
                name: "Ada Lovelace".to_owned(),
                email: "ada@example.com".to_owned(),
                phone: "+441234".to_owned(),
            },
            ship_to: Address {
                line1: "1 Main St".to_owned(),
                line2: String::new(),
                city: "Springfield".to_owned(),
                region: self.region.clone(),
                postal_code: self.postal_code.clone(),
                country_code: self.country_code.clone(),
            },
            lines: vec![PricedLine {
                sku: "SKU-1".to_owned(),
                name: "Widget".to_owned(),
                quantity: 1,
                unit_price_minor: self.total_minor,
                line_total_minor: self.total_minor,
            }],
            currency_code: self.currency_code.clone(),
            total_minor: self.total_minor,
            region: "test".to_owned(),
            placed_at: self.placed_at,
            traceparent: self.traceparent.clone(),
            tracestate: String::new(),
        }
    }
}

/// Places `orders` through the Orders store, one after another (which wakes the dispatchers).
pub async fn insert_orders(
    db: &Database,
    orders: &[FixtureOrder],
) -> Result<(), waybill_orders::store::StoreError> {
    let store = SqlOrderStore::new(db);
    for order in orders {
        store.place_order(&order.to_new_order()).await?;
    }
    Ok(())
}
