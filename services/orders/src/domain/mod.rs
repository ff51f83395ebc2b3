//! Pure order logic: no tonic, sqlx or rdkafka in here, and unit-tested in place.
//!
//! - [`model`]: what an order is once accepted.
//! - [`validate`]: every rule a `PlaceOrderRequest` must meet, with errors naming the field.
//! - [`pricing`]: lines priced from the catalog, totals with overflow checks.
//! - [`page_token`]: opaque, tamper-evident cursors for `ListOrders`.

pub mod countries;
pub mod model;
pub mod page_token;
pub mod pricing;
pub mod validate;

/// A rule a request broke: which field, and what the rule is. Shown to callers as
/// `"<field>: <rule>"`, so a person can fix the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct InvalidField {
    /// Path of the offending field, e.g. `lines[2].quantity`.
    pub field: String,
    /// What the field must be.
    pub rule: String,
}

impl InvalidField {
    /// A broken rule on `field`.
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }
}
