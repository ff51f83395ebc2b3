//! The sample data tests share, built in one place: an order a storefront would place
//! ([`sample_order`]), a partner an operator would enrol ([`sample_partner`]) and its route
//! ([`sample_route`]). Each has sensible defaults; a test changes only what it is about,
//! through the `with_*` methods of [`OrderFixture`], [`PartnerFixture`] and [`RouteFixture`],
//! so what a test varies is visible where it varies it. [`enroll`] enrols a partner, its route
//! and its keys through any dispatcher's admin API (in-process or a process of its own).
//!
//! ```
//! use waybill_test_kit::fixtures::{OrderFixture as _, sample_order};
//! let order = sample_order("k1", "GB").with_lines(&[("MUG-001", 3), ("LAMP-DESK", 1)]);
//! assert_eq!(order.lines.len(), 2);
//! assert_eq!(order.shipping_address.unwrap().country_code, "GB");
//! ```

use std::time::Duration;

use tonic::transport::Channel;
use waybill_proto::v1::{self as pb, dispatch_admin_client::DispatchAdminClient};

/// The sample order's customer: id, name, email, phone.
pub const SAMPLE_CUSTOMER: (&str, &str, &str, &str) =
    ("cust-1", "Ada Lovelace", "ada@example.com", "+1 555 0100");

/// A valid `PlaceOrderRequest` under idempotency key `key`, shipping to `country` (an
/// ISO 3166-1 alpha-2 code): customer [`SAMPLE_CUSTOMER`], an address at 1 Main St,
/// Springfield, WA 98001 (no line 2), one line of one `MUG-001` (in the sample catalog).
pub fn sample_order(key: &str, country: &str) -> pb::PlaceOrderRequest {
    let (id, name, email, phone) = SAMPLE_CUSTOMER;
    pb::PlaceOrderRequest {
        idempotency_key: key.to_owned(),
        customer: Some(pb::Customer {
            id: id.to_owned(),
            name: name.to_owned(),
            email: email.to_owned(),
            phone: phone.to_owned(),
        }),
        shipping_address: Some(pb::Address {
            line1: "1 Main St".to_owned(),
            line2: String::new(),
            city: "Springfield".to_owned(),
            region: "WA".to_owned(),
            postal_code: "98001".to_owned(),
            country_code: country.to_owned(),
        }),
        lines: vec![pb::LineItem {
            sku: "MUG-001".to_owned(),
            quantity: 1,
        }],
    }
}

/// Overrides of a [`sample_order`].
pub trait OrderFixture: Sized {
    /// These lines (sku, quantity) instead of one `MUG-001`.
    #[must_use]
    fn with_lines(self, lines: &[(&str, u32)]) -> Self;
    /// One line of `quantity` × `sku`.
    #[must_use]
    fn with_line(self, sku: &str, quantity: u32) -> Self {
        self.with_lines(&[(sku, quantity)])
    }
    /// The address's second line (where the sandbox markers go).
    #[must_use]
    fn with_line2(self, line2: &str) -> Self;
    /// Another customer id (the rest of the customer unchanged).
    #[must_use]
    fn with_customer_id(self, id: &str) -> Self;
}

impl OrderFixture for pb::PlaceOrderRequest {
    fn with_lines(mut self, lines: &[(&str, u32)]) -> Self {
        self.lines = lines
            .iter()
            .map(|&(sku, quantity)| pb::LineItem {
                sku: sku.to_owned(),
                quantity,
            })
            .collect();
        self
    }

    fn with_line2(mut self, line2: &str) -> Self {
        if let Some(address) = &mut self.shipping_address {
            line2.clone_into(&mut address.line2);
        }
        self
    }

    fn with_customer_id(mut self, id: &str) -> Self {
        if let Some(customer) = &mut self.customer {
            id.clone_into(&mut customer.id);
        }
        self
    }
}

/// An enabled partner `id` as `waybill dev` enrols its examples: display name `"{id} (test)"`,
/// a ten-minute handover deadline, a resend budget of 3.
pub fn sample_partner(id: &str) -> pb::Partner {
    pb::Partner {
        id: id.to_owned(),
        display_name: format!("{id} (test)"),
        enabled: true,
        handover_deadline: Some(
            Duration::from_secs(600)
                .try_into()
                .expect("ten minutes fit a protobuf Duration"),
        ),
        resend_budget: Some(3),
        ..pb::Partner::default()
    }
}

/// Overrides of a [`sample_partner`].
pub trait PartnerFixture: Sized {
    /// Another handover deadline (how long the dispatcher waits for the receipt).
    #[must_use]
    fn with_handover_deadline(self, deadline: Duration) -> Self;
}

impl PartnerFixture for pb::Partner {
    fn with_handover_deadline(mut self, deadline: Duration) -> Self {
        self.handover_deadline = Some(
            deadline
                .try_into()
                .expect("a test's deadline fits a protobuf Duration"),
        );
        self
    }
}

/// An enabled route `"{partner_id}-{country}"` sending every order to `country` to
/// `partner_id`, at priority 10.
pub fn sample_route(partner_id: &str, country: &str) -> pb::Route {
    pb::Route {
        id: format!("{partner_id}-{country}"),
        partner_id: partner_id.to_owned(),
        country_code: country.to_owned(),
        priority: 10,
        enabled: true,
        ..pb::Route::default()
    }
}

/// Overrides of a [`sample_route`].
pub trait RouteFixture: Sized {
    /// Another priority (the lowest number is tried first).
    #[must_use]
    fn with_priority(self, priority: i32) -> Self;
}

impl RouteFixture for pb::Route {
    fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
}

/// Enrols `partner` with `route` and each key (`key_id`, raw 32-byte Ed25519 public key)
/// through the dispatcher's admin API, as an operator would; a refusal fails the test.
pub async fn enroll(
    admin: &mut DispatchAdminClient<Channel>,
    partner: pb::Partner,
    route: pb::Route,
    keys: &[(&str, &[u8])],
) {
    let partner_id = partner.id.clone();
    enroll_partner(admin, partner).await;
    set_route(admin, route).await;
    for (key_id, public_key) in keys {
        add_partner_key(admin, &partner_id, key_id, public_key).await;
    }
}

/// Enrols (or updates) `partner` through the admin API; a refusal fails the test.
pub async fn enroll_partner(admin: &mut DispatchAdminClient<Channel>, partner: pb::Partner) {
    let id = partner.id.clone();
    admin
        .enroll_partner(pb::EnrollPartnerRequest {
            partner: Some(partner),
        })
        .await
        .unwrap_or_else(|status| panic!("enrol partner {id}: {status}"));
}

/// Sets `route` through the admin API; a refusal fails the test.
pub async fn set_route(admin: &mut DispatchAdminClient<Channel>, route: pb::Route) {
    let id = route.id.clone();
    admin
        .set_route(pb::SetRouteRequest {
            route: Some(route),
            ..pb::SetRouteRequest::default()
        })
        .await
        .unwrap_or_else(|status| panic!("set route {id}: {status}"));
}

/// Enrols `public_key` (raw 32 bytes) for `partner_id` as `key_id`; a refusal fails the test.
pub async fn add_partner_key(
    admin: &mut DispatchAdminClient<Channel>,
    partner_id: &str,
    key_id: &str,
    public_key: &[u8],
) {
    admin
        .add_partner_key(pb::AddPartnerKeyRequest {
            partner_id: partner_id.to_owned(),
            key_id: key_id.to_owned(),
            public_key: public_key.to_vec(),
        })
        .await
        .unwrap_or_else(|status| panic!("add key {key_id} for {partner_id}: {status}"));
}
