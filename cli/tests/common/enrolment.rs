//! Orders and partners as the process-level tests make them: a place-order request shipping to
//! a country, and a partner enrolled through `DispatchAdmin` with a route for one country and,
//! for partners that report, a fresh Ed25519 key.

use std::{path::Path, time::Duration};

use tonic::transport::Channel;
use uuid::Uuid;
use waybill_proto::v1::{self as pb, dispatch_admin_client::DispatchAdminClient};

/// An order of one mug for `country`, placed under the idempotency key `key`.
pub fn order_request(key: &str, country: &str) -> pb::PlaceOrderRequest {
    pb::PlaceOrderRequest {
        idempotency_key: key.to_owned(),
        customer: Some(pb::Customer {
            id: "chaos".into(),
            name: "Chaos Monkey".into(),
            email: "chaos@example.com".into(),
            phone: String::new(),
        }),
        shipping_address: Some(pb::Address {
            line1: "1 Main St".into(),
            line2: String::new(),
            city: "Springfield".into(),
            region: String::new(),
            postal_code: "12345".into(),
            country_code: country.to_owned(),
        }),
        lines: vec![pb::LineItem {
            sku: "MUG-001".into(),
            quantity: 1,
        }],
    }
}

/// Enrols partner `id` with its handover deadline and resend budget, and a route sending it
/// the orders for `country`.
pub async fn enroll(
    admin: &mut DispatchAdminClient<Channel>,
    id: &str,
    country: &str,
    handover_deadline: Duration,
    resend_budget: i32,
) {
    admin
        .enroll_partner(pb::EnrollPartnerRequest {
            partner: Some(pb::Partner {
                id: id.to_owned(),
                display_name: id.to_owned(),
                enabled: true,
                handover_deadline: Some(prost_types::Duration {
                    seconds: i64::try_from(handover_deadline.as_secs()).unwrap(),
                    nanos: 0,
                }),
                resend_budget: Some(resend_budget),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    admin
        .set_route(pb::SetRouteRequest {
            route: Some(pb::Route {
                id: format!("{id}-{country}"),
                partner_id: id.to_owned(),
                country_code: country.to_owned(),
                priority: 10,
                enabled: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Makes a fresh key for partner `id`, writes it to `key_file` (PKCS#8 PEM) and enrols its
/// public half as `<id>-k1`; returns that key id.
pub async fn add_key(
    admin: &mut DispatchAdminClient<Channel>,
    id: &str,
    key_file: &Path,
) -> String {
    let seed: Vec<u8> = [Uuid::new_v4(), Uuid::new_v4()]
        .iter()
        .flat_map(|u| *u.as_bytes())
        .collect();
    let key = waybill_token::SigningKey::from_bytes(&seed.try_into().unwrap());
    std::fs::write(
        key_file,
        waybill_token::keys::signing_key_to_pem(&key).unwrap(),
    )
    .unwrap();
    let key_id = format!("{id}-k1");
    admin
        .add_partner_key(pb::AddPartnerKeyRequest {
            partner_id: id.to_owned(),
            key_id: key_id.clone(),
            public_key: key.verifying_key().to_bytes().to_vec(),
        })
        .await
        .unwrap();
    key_id
}
