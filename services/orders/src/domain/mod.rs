//! Pure order logic: no tonic, sqlx or rdkafka in here, and unit-tested in place.
//!
//! - [`model`]: what an order is once accepted.
//! - [`validate`]: every rule a `PlaceOrderRequest` must meet, with errors naming the field.
//! - [`pricing`]: lines priced from the catalog, totals with overflow checks.
//! - [`page_token`]: opaque cursors for `ListOrders`, authenticated with the server's key.

pub mod catalog_rules;
pub mod countries;
pub mod model;
pub mod page_token;
pub mod pricing;
pub mod validate;

/// A rule a request broke: which field, and what the rule is (`"<field>: <rule>"`). The kit's
/// type, so that every service reports a broken field the same way.
pub use waybill_service_kit::text::InvalidField;
