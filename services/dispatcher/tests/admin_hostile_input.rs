//! `DispatchAdmin` as an attacker tries it, on both backends: control characters in any text
//! field are INVALID_ARGUMENT naming the field (never INTERNAL on Postgres and OK on SQLite),
//! over-long input is quoted as a bounded prefix, and malformed page tokens are refused.
#![allow(clippy::unwrap_used)]

mod common;

use common::Harness;
use tonic::{Code, Status, transport::Channel};
use waybill_proto::v1::{
    self, dispatch_admin_client::DispatchAdminClient, explain_route_request::Target,
};
use waybill_service_kit::text::MAX_MESSAGE_BYTES;
use waybill_test_kit::TestBackend;

fn assert_invalid(status: &Status, needle: &str, context: &str) {
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "{context}: {:?}",
        status.message()
    );
    assert!(
        status.message().contains(needle),
        "{context}: expected {needle:?} in {:?}",
        status.message()
    );
    assert!(status.message().len() <= MAX_MESSAGE_BYTES, "{context}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_admin_input_is_invalid_argument_on_both_backends() {
    for backend in [TestBackend::Postgres, TestBackend::Sqlite] {
        let h = Harness::new(backend).await;
        let running = h.serve("dispatcher-hostile").await;
        let mut admin = DispatchAdminClient::<Channel>::connect(format!("http://{}", running.addr))
            .await
            .unwrap();
        let ctx = |what: &str| format!("{backend:?} {what}");

        let status = admin
            .list_dispatches(v1::ListDispatchesRequest {
                filter: Some(v1::DispatchFilter {
                    partner_id: "acme\0".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_invalid(
            &status,
            "filter.partner_id: must not contain control",
            &ctx("filter"),
        );

        for token in ["not-a-uuid", "\0", &"A".repeat(50_000)] {
            let status = admin
                .list_dispatches(v1::ListDispatchesRequest {
                    page_token: token.to_owned(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_invalid(&status, "page_token", &ctx("page token"));
        }

        let status = admin
            .enroll_partner(v1::EnrollPartnerRequest {
                partner: Some(v1::Partner {
                    id: "acme".into(),
                    display_name: "Acme\0Freight".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_invalid(&status, "partner.display_name", &ctx("display name"));

        let long = "x".repeat(60_000);
        let status = admin
            .enroll_partner(v1::EnrollPartnerRequest {
                partner: Some(v1::Partner {
                    id: long.clone(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_invalid(&status, "… (60000 characters)", &ctx("long partner id"));
        assert!(status.message().len() < 300, "{}", status.message());

        for (route, needle) in [
            (
                v1::Route {
                    id: "r1".into(),
                    partner_id: "acme".into(),
                    country_code: "DE".into(),
                    region: "B\0".into(),
                    ..Default::default()
                },
                "route.region",
            ),
            (
                v1::Route {
                    id: "r1".into(),
                    partner_id: "acme".into(),
                    country_code: "DE".into(),
                    postal_prefix: "1\u{1b}".into(),
                    ..Default::default()
                },
                "route.postal_prefix",
            ),
            (
                v1::Route {
                    id: "r1".into(),
                    partner_id: "acme".into(),
                    country_code: long.clone(),
                    ..Default::default()
                },
                "route.country_code: \"xxx",
            ),
        ] {
            let status = admin
                .set_route(v1::SetRouteRequest {
                    route: Some(route),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_invalid(&status, needle, &ctx(needle));
            assert!(status.message().len() < 300, "{}", status.message());
        }

        let status = admin
            .explain_route(v1::ExplainRouteRequest {
                target: Some(Target::Address(v1::Address {
                    city: "Ber\0lin".into(),
                    country_code: "DE".into(),
                    ..Default::default()
                })),
            })
            .await
            .unwrap_err();
        assert_invalid(&status, "address.city", &ctx("explain"));

        for id in ["\0", &long] {
            let status = admin
                .get_dispatch(v1::GetDispatchRequest {
                    order_id: id.to_owned(),
                })
                .await
                .unwrap_err();
            assert_invalid(&status, "is not a UUID", &ctx("get dispatch"));
            let status = admin
                .retry_dispatches(v1::RetryDispatchesRequest {
                    order_ids: vec![id.to_owned()],
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_invalid(&status, "is not a UUID", &ctx("retry"));
        }
        let status = admin
            .disable_partner(v1::DisablePartnerRequest {
                partner_id: "ac\0me".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_invalid(&status, "partner_id: \"ac\\0me\"", &ctx("disable"));

        let listed = admin
            .list_partners(v1::ListPartnersRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(listed.partners.is_empty(), "nothing was changed");
        running.stop().await;
    }
}
