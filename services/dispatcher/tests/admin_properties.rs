//! Property test of DispatchAdmin's request validation over real gRPC on both backends: hostile
//! text in every field of every RPC never gets INTERNAL/UNKNOWN or an unbounded message.
//! A short run by default; `PROPTEST_CASES=2000 cargo test -p waybill-dispatcher --release
//! --test admin_properties` runs longer.
#![allow(clippy::unwrap_used)]

mod common;

use common::Harness;
use proptest::{prelude::*, test_runner::TestRunner};
use tonic::{Code, Status, transport::Channel};
use waybill_proto::v1::{
    self, dispatch_admin_client::DispatchAdminClient, explain_route_request::Target,
};
use waybill_service_kit::text::MAX_MESSAGE_BYTES;
use waybill_test_kit::TestBackend;

fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => ".{0,30}",
        2 => "[\\x00-\\x1f\\x7fa-z0-9-]{0,12}",
        1 => (0usize..3_000, any::<char>()).prop_map(|(n, c)| c.to_string().repeat(n)),
        2 => prop_oneof![
            Just("acme".to_owned()),
            Just("DE".to_owned()),
            Just("0190f2c4-0000-7000-8000-000000000000".to_owned()),
        ],
    ]
}

fn acceptable(result: Result<(), Status>) {
    if let Err(status) = result {
        assert!(
            !matches!(status.code(), Code::Internal | Code::Unknown),
            "{:?}: {}",
            status.code(),
            status.message()
        );
        assert!(status.message().len() <= MAX_MESSAGE_BYTES);
    }
}

async fn exercise(admin: &mut DispatchAdminClient<Channel>, t: &[String], n: i32) {
    let filter = Some(v1::DispatchFilter {
        partner_id: t[0].clone(),
        state: n % 12,
    });
    acceptable(
        admin
            .list_dispatches(v1::ListDispatchesRequest {
                filter: filter.clone(),
                page_size: n.unsigned_abs() % 2_000,
                page_token: t[1].clone(),
            })
            .await
            .map(|_| ()),
    );
    acceptable(
        admin
            .get_dispatch(v1::GetDispatchRequest {
                order_id: t[2].clone(),
            })
            .await
            .map(|_| ()),
    );
    acceptable(
        admin
            .retry_dispatches(v1::RetryDispatchesRequest {
                order_ids: if n % 2 == 0 {
                    vec![t[2].clone()]
                } else {
                    vec![]
                },
                filter,
                ..Default::default()
            })
            .await
            .map(|_| ()),
    );
    acceptable(
        admin
            .enroll_partner(v1::EnrollPartnerRequest {
                partner: Some(v1::Partner {
                    id: t[3].clone(),
                    display_name: t[4].clone(),
                    topic: t[8].clone(),
                    ..Default::default()
                }),
            })
            .await
            .map(|_| ()),
    );
    acceptable(
        admin
            .set_route(v1::SetRouteRequest {
                route: Some(v1::Route {
                    id: t[5].clone(),
                    partner_id: t[3].clone(),
                    country_code: t[6].clone(),
                    region: t[7].clone(),
                    postal_prefix: t[8].clone(),
                    priority: n,
                    enabled: n % 3 == 0,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    );
    acceptable(
        admin
            .add_partner_key(v1::AddPartnerKeyRequest {
                partner_id: t[3].clone(),
                key_id: t[5].clone(),
                public_key: t[9].as_bytes().to_vec(),
            })
            .await
            .map(|_| ()),
    );
    acceptable(
        admin
            .list_partner_keys(v1::ListPartnerKeysRequest {
                partner_id: t[3].clone(),
            })
            .await
            .map(|_| ()),
    );
    acceptable(
        admin
            .revoke_partner_key(v1::RevokePartnerKeyRequest {
                partner_id: t[3].clone(),
                key_id: t[5].clone(),
            })
            .await
            .map(|_| ()),
    );
    acceptable(
        admin
            .explain_route(v1::ExplainRouteRequest {
                target: Some(Target::Address(v1::Address {
                    line1: t[4].clone(),
                    city: t[7].clone(),
                    region: t[7].clone(),
                    postal_code: t[8].clone(),
                    country_code: t[6].clone(),
                    ..Default::default()
                })),
            })
            .await
            .map(|_| ()),
    );
    acceptable(
        admin
            .disable_partner(v1::DisablePartnerRequest {
                partner_id: t[3].clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    );
    acceptable(
        admin
            .delete_route(v1::DeleteRouteRequest {
                route_id: t[5].clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    );
}

#[test]
fn hostile_admin_requests_never_get_an_internal_error() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(16);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for backend in [TestBackend::Postgres, TestBackend::Sqlite] {
        let h = runtime.block_on(Harness::new(backend));
        let running = runtime.block_on(h.serve("dispatcher-properties"));
        let admin = runtime.block_on(async {
            DispatchAdminClient::connect(format!("http://{}", running.addr))
                .await
                .unwrap()
        });
        let mut runner = TestRunner::new(ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let strategy = (proptest::collection::vec(hostile_text(), 10), any::<i32>());
        runner
            .run(&strategy, |(texts, n)| {
                let mut admin = admin.clone();
                runtime.block_on(exercise(&mut admin, &texts, n));
                Ok(())
            })
            .unwrap_or_else(|failure| panic!("{backend:?}: {failure}"));
        runtime.block_on(running.stop());
    }
}
