//! `DispatchAdmin` over real gRPC on loopback: every RPC, paging, and bad input that must get a
//! clear status and change nothing.
#![allow(clippy::unwrap_used)]

mod common;

use chrono::Duration as Span;
use common::Harness;
use tonic::{Code, transport::Channel};
use waybill_proto::v1::{
    self, DispatchState, dispatch_admin_client::DispatchAdminClient, explain_route_request::Target,
};
use waybill_test_kit::{TestBackend, eventually};

async fn client(addr: std::net::SocketAddr) -> DispatchAdminClient<Channel> {
    DispatchAdminClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn route(id: &str, partner: &str, country: &str, priority: i32) -> v1::Route {
    v1::Route {
        id: id.into(),
        partner_id: partner.into(),
        country_code: country.into(),
        priority,
        enabled: true,
        ..v1::Route::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partners_keys_routes_and_explain_on_postgres() {
    partners_keys_routes_and_explain(TestBackend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partners_keys_routes_and_explain_on_sqlite() {
    partners_keys_routes_and_explain(TestBackend::Sqlite).await;
}

async fn partners_keys_routes_and_explain(backend: TestBackend) {
    let h = Harness::new(backend).await;
    let running = h.serve("dispatcher-a").await;
    let mut admin = client(running.addr).await;

    let partner = admin
        .enroll_partner(v1::EnrollPartnerRequest {
            partner: Some(v1::Partner {
                id: "acme".into(),
                display_name: "Acme Freight".into(),
                handover_deadline: Some(prost_types::Duration {
                    seconds: 300,
                    nanos: 0,
                }),
                resend_budget: Some(2),
                ..v1::Partner::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(partner.topic, h.topics.partner_topic("acme"));
    assert!(partner.enabled);
    assert_eq!(partner.resend_budget, Some(2));

    // A partner enrolled without a resend budget gets the default, not 0 (which would never
    // re-send an order the broker lost).
    let defaulted = admin
        .enroll_partner(v1::EnrollPartnerRequest {
            partner: Some(v1::Partner {
                id: "initech".into(),
                ..v1::Partner::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        defaulted.resend_budget,
        Some(waybill_dispatcher::grpc::DEFAULT_RESEND_BUDGET)
    );
    assert_eq!(defaulted.handover_deadline.map(|d| d.seconds), Some(600));
    let explicit_zero = admin
        .enroll_partner(v1::EnrollPartnerRequest {
            partner: Some(v1::Partner {
                id: "initech".into(),
                resend_budget: Some(0),
                ..v1::Partner::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(explicit_zero.resend_budget, Some(0), "0 stays possible");
    // The topic exists: a message can be produced to it and read back.
    let listed = admin
        .list_partners(v1::ListPartnersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .partners
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>(),
        ["acme", "initech"]
    );

    let key = admin
        .add_partner_key(v1::AddPartnerKeyRequest {
            partner_id: "acme".into(),
            key_id: "k1".into(),
            public_key: vec![7; 32],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(key.revoked_at, None);
    let duplicate = admin
        .add_partner_key(v1::AddPartnerKeyRequest {
            partner_id: "acme".into(),
            key_id: "k1".into(),
            public_key: vec![8; 32],
        })
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists, "{duplicate:?}");
    let short = admin
        .add_partner_key(v1::AddPartnerKeyRequest {
            partner_id: "acme".into(),
            key_id: "k2".into(),
            public_key: vec![1; 31],
        })
        .await
        .unwrap_err();
    assert_eq!(short.code(), Code::InvalidArgument);
    assert!(short.message().contains("32-byte"), "{}", short.message());
    let revoked = admin
        .revoke_partner_key(v1::RevokePartnerKeyRequest {
            partner_id: "acme".into(),
            key_id: "k1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked_at.is_some());
    let keys = admin
        .list_partner_keys(v1::ListPartnerKeysRequest {
            partner_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys.keys.len(), 1, "the refused keys were not stored");

    admin
        .set_route(v1::SetRouteRequest {
            route: Some(route("de", "acme", "de", 5)),
            ..Default::default()
        })
        .await
        .unwrap();
    let ghost = admin
        .set_route(v1::SetRouteRequest {
            route: Some(route("fr", "ghost", "FR", 1)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(ghost.code(), Code::NotFound);
    assert!(ghost.message().contains("enroll"), "{}", ghost.message());
    let bad_country = admin
        .set_route(v1::SetRouteRequest {
            route: Some(route("x", "acme", "DEU", 1)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_country.code(), Code::InvalidArgument);
    let routes = admin
        .list_routes(v1::ListRoutesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        routes
            .routes
            .iter()
            .map(|r| (r.id.as_str(), r.country_code.as_str()))
            .collect::<Vec<_>>(),
        [("de", "DE")]
    );

    let explained = admin
        .explain_route(v1::ExplainRouteRequest {
            target: Some(Target::Address(v1::Address {
                country_code: "FR".into(),
                ..v1::Address::default()
            })),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(explained.chosen, None);
    assert_eq!(explained.verdicts[0].reason, "country FR != DE");
    let order = h.place("DE", 100).await;
    let explained = admin
        .explain_route(v1::ExplainRouteRequest {
            target: Some(Target::OrderId(order.to_string())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(explained.chosen.map(|r| r.id), Some("de".to_owned()));
    let unknown = admin
        .explain_route(v1::ExplainRouteRequest {
            target: Some(Target::OrderId(uuid::Uuid::new_v4().to_string())),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    admin
        .delete_route(v1::DeleteRouteRequest {
            route_id: "de".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let gone = admin
        .delete_route(v1::DeleteRouteRequest {
            route_id: "de".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let disabled = admin
        .disable_partner(v1::DisablePartnerRequest {
            partner_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!disabled.enabled);
    let bad_id = admin
        .disable_partner(v1::DisablePartnerRequest {
            partner_id: "Acme!".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatches_list_page_get_retry_and_stats() {
    let h = Harness::new(TestBackend::Postgres).await;
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    // The server runs on the system clock: place "now".
    let now = chrono::Utc::now;
    let unroutable: Vec<_> = [
        h.place_at("FR", 1, now()).await,
        h.place_at("FR", 2, now()).await,
        h.place_at("FR", 3, now()).await,
    ]
    .into();
    let sent = h.place_at("DE", 4, now()).await;
    let running = h.serve("dispatcher-a").await;
    let mut admin = client(running.addr).await;
    eventually(
        std::time::Duration::from_secs(10),
        "the order sent",
        || async { (h.dispatch(sent).await.state == DispatchState::Sent).then_some(()) },
    )
    .await;

    let filter = v1::DispatchFilter {
        state: DispatchState::Unroutable as i32,
        partner_id: String::new(),
    };
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_dispatches(v1::ListDispatchesRequest {
                filter: Some(filter.clone()),
                page_size: 2,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.dispatches.len() <= 2);
        seen.extend(page.dispatches.into_iter().map(|d| d.order_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let mut expected: Vec<String> = unroutable.iter().map(ToString::to_string).collect();
    expected.sort();
    assert_eq!(
        seen, expected,
        "every unroutable order, each once, across pages"
    );
    let bad_token = admin
        .list_dispatches(v1::ListDispatchesRequest {
            filter: None,
            page_size: 2,
            page_token: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);

    let shown = admin
        .get_dispatch(v1::GetDispatchRequest {
            order_id: sent.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.state, DispatchState::Sent as i32);
    assert_eq!(shown.partner_id, "acme");
    assert!(
        shown.attempt_log.is_empty(),
        "a first-try send is on the row, not in the attempt log: {:?}",
        shown.attempt_log
    );
    let missing = admin
        .get_dispatch(v1::GetDispatchRequest {
            order_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // A SENT order cannot be retried; the whole request is refused and nothing changes.
    let mixed = admin
        .retry_dispatches(v1::RetryDispatchesRequest {
            order_ids: vec![unroutable[0].to_string(), sent.to_string()],
            filter: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(mixed.code(), Code::FailedPrecondition);
    assert_eq!(
        h.dispatch(unroutable[0]).await.state,
        DispatchState::Unroutable
    );
    let no_state = admin
        .retry_dispatches(v1::RetryDispatchesRequest {
            order_ids: vec![],
            filter: Some(v1::DispatchFilter::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(no_state.code(), Code::InvalidArgument);

    // Route FR, then retry every unroutable order by filter: all are sent.
    h.route("fr", "acme", "FR", 1).await;
    let retried = admin
        .retry_dispatches(v1::RetryDispatchesRequest {
            order_ids: vec![],
            filter: Some(filter),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Answered in the order they become due (the oldest first); the same orders.
    let mut retried_ids = retried.order_ids.clone();
    retried_ids.sort();
    assert_eq!(retried_ids, expected);
    for id in &unroutable {
        eventually(
            std::time::Duration::from_secs(10),
            "the retried order sent",
            || async { (h.dispatch(*id).await.state == DispatchState::Sent).then_some(()) },
        )
        .await;
    }

    let stats = admin
        .get_relay_stats(v1::GetRelayStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.instance_id, "dispatcher-a");
    assert_eq!(stats.sent, 4);
    assert_eq!(stats.unroutable, 3);
    assert_eq!(
        stats
            .backlog
            .iter()
            .map(|c| (c.state, c.count))
            .collect::<Vec<_>>(),
        [(DispatchState::Sent as i32, 4)]
    );
    assert!(
        stats
            .produce_latency_max
            .is_some_and(|d| d.seconds > 0 || d.nanos > 0)
    );
    running.stop().await;
}
