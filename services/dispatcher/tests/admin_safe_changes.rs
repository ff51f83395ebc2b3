//! Safe changes to routing and replays over real gRPC, on both backends, with the dispatcher on
//! the tests' manual clock: a route set or deleted and a partner disabled answer their impact
//! (countries left without a route, the last day's orders that would go elsewhere) and a dry
//! run of each changes nothing — routes, partners, dispatch rows and the audit trail compared
//! before and after; deleting a country's only route says so, also when applied, in the answer
//! and the audit line. `RetryDispatches` is capped (truncated, and says so), spreads the due
//! times, and its dry run changes nothing; bad bounds are refused naming the field. Keys show
//! when they were last used.
#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use common::{Harness, Running};
use tonic::{Code, transport::Channel};
use uuid::Uuid;
use waybill_dispatcher::domain::model::{
    DispatchFilter, DispatchRecord, PartnerRecord, RouteRecord,
};
use waybill_proto::{
    time::to_timestamp,
    v1::{self, DispatchState, dispatch_admin_client::DispatchAdminClient},
};
use waybill_service_kit::{db::Instant, on_pool};
use waybill_test_kit::{TestBackend, eventually, on_both_backends};

on_both_backends!(
    route_changes_answer_their_impact_and_dry_runs_change_nothing,
    replays_are_capped_and_spread_and_dry_runs_change_nothing,
    keys_show_when_they_were_last_used,
);

/// The audit lines that mention `needle`.
fn audit_of(needle: &str) -> Vec<String> {
    common::audit::lines_with(needle)
}

/// A tag per backend, so that ids in the shared audit log are each test's own.
fn tag(backend: TestBackend) -> &'static str {
    match backend {
        TestBackend::Postgres => "pg",
        TestBackend::Sqlite => "lite",
    }
}

/// The dispatcher (admin API and relay) on the harness' manual clock.
async fn serve(h: &Harness) -> (Running, DispatchAdminClient<Channel>) {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let deps = waybill_dispatcher::DispatcherDeps {
        db: h.db.clone(),
        clock: Arc::new(h.clock.clone()),
        kafka: h.kafka(),
        topic_creator: h.broker.topic_creator(),
        relay: h.settings("dispatcher-a"),
        limits: waybill_service_kit::grpc::ServerLimits::default(),
        shutdown_grace: Duration::from_secs(5),
        metrics: Default::default(),
    };
    let task = tokio::spawn(waybill_dispatcher::serve(listener, deps, shutdown.clone()));
    let admin = DispatchAdminClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    (
        Running {
            addr,
            shutdown,
            task,
        },
        admin,
    )
}

/// Everything a change could touch.
#[derive(Debug, PartialEq)]
struct Snapshot {
    routes: Vec<RouteRecord>,
    partners: Vec<PartnerRecord>,
    rows: Vec<DispatchRecord>,
}

async fn snapshot(h: &Harness) -> Snapshot {
    Snapshot {
        routes: h.store.list_routes().await.unwrap(),
        partners: h.store.list_partners().await.unwrap(),
        rows: h
            .store
            .list_dispatches(&DispatchFilter::default(), None, 1_000)
            .await
            .unwrap(),
    }
}

/// Waits until the relay has settled all `count` rows in `state`.
async fn settled(h: &Harness, count: usize, state: DispatchState) {
    eventually(
        Duration::from_secs(30),
        "the relay settled every order",
        || async {
            let rows = snapshot(h).await.rows;
            rows.len() == count && rows.iter().all(|row| row.state == state)
        },
    )
    .await;
}

fn shift(from: &str, to: &str, orders: i64) -> v1::PartnerShift {
    v1::PartnerShift {
        from_partner_id: from.to_owned(),
        to_partner_id: to.to_owned(),
        orders,
    }
}

fn minutes(n: i64) -> chrono::Duration {
    chrono::Duration::minutes(n)
}

async fn route_changes_answer_their_impact_and_dry_runs_change_nothing(backend: TestBackend) {
    common::audit::capture();
    let h = Harness::new(backend).await;
    let (acme, beta) = (
        format!("acme-{}", tag(backend)),
        format!("beta-{}", tag(backend)),
    );
    h.partner(&acme, "DE", minutes(10), 5).await;
    h.partner(&beta, "FR", minutes(10), 5).await;
    let (beta_fr, beta_de) = (format!("{beta}-FR"), format!("{beta}-de"));
    h.route(&beta_de, &beta, "DE", 20).await;
    let now = h.clock_now();
    for _ in 0..3 {
        h.place_at("DE", 1_000, now - minutes(60)).await;
    }
    for _ in 0..2 {
        h.place_at("FR", 1_000, now - minutes(120)).await;
    }
    // Outside the last day: not weighed.
    h.place_at("FR", 1_000, now - minutes(25 * 60)).await;
    let (running, mut admin) = serve(&h).await;
    settled(&h, 6, DispatchState::Sent).await;
    let before = snapshot(&h).await;
    let since = Some(to_timestamp(now - chrono::Duration::hours(24)));

    // The only route to FR, deleted in a dry run: FR is left without one, its 2 orders of the
    // last day would route nowhere.
    let deleted = admin
        .delete_route(v1::DeleteRouteRequest {
            route_id: beta_fr.clone(),
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner()
        .impact
        .unwrap();
    assert_eq!(
        deleted,
        v1::RoutingImpact {
            applied: false,
            countries_left_without_route: vec!["FR".into()],
            since,
            orders_considered: 5,
            orders_rerouted: 2,
            orders_unroutable: 2,
            shifts: vec![shift(&beta, "", 2)],
            partial: false,
        }
    );

    // A route that takes DE from acme to beta, set in a dry run.
    let first = format!("{beta}-de-first");
    let route = admin
        .set_route(v1::SetRouteRequest {
            route: Some(v1::Route {
                id: first.clone(),
                partner_id: beta.clone(),
                country_code: "de".into(),
                priority: 1,
                enabled: true,
                ..Default::default()
            }),
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (route.id.as_str(), route.country_code.as_str()),
        (first.as_str(), "DE")
    );
    let impact = route.impact.unwrap();
    assert!(!impact.applied);
    assert!(impact.countries_left_without_route.is_empty());
    assert_eq!((impact.orders_rerouted, impact.orders_unroutable), (3, 0));
    assert_eq!(impact.shifts, [shift(&acme, &beta, 3)]);

    // Disabling acme (dry run): DE still has beta's route, which takes its orders.
    let disabled = admin
        .disable_partner(v1::DisablePartnerRequest {
            partner_id: acme.clone(),
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!disabled.enabled, "the partner as it would be");
    let impact = disabled.impact.unwrap();
    assert!(impact.countries_left_without_route.is_empty());
    assert_eq!(impact.shifts, [shift(&acme, &beta, 3)]);
    // Disabling beta (dry run): FR is left without a route, DE is not affected.
    let impact = admin
        .disable_partner(v1::DisablePartnerRequest {
            partner_id: beta.clone(),
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner()
        .impact
        .unwrap();
    assert_eq!(impact.countries_left_without_route, ["FR"]);
    assert_eq!(impact.shifts, [shift(&beta, "", 2)]);
    // So does UpdatePartner when it disables (dry run).
    let updated = admin
        .update_partner(v1::UpdatePartnerRequest {
            partner_id: beta.clone(),
            enabled: Some(false),
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.impact.unwrap().countries_left_without_route, ["FR"]);

    // A dry run of what cannot be done is refused as the change itself would be.
    let status = admin
        .delete_route(v1::DeleteRouteRequest {
            route_id: "nowhere".into(),
            dry_run: true,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
    let status = admin
        .set_route(v1::SetRouteRequest {
            route: Some(v1::Route {
                id: "ghost-de".into(),
                partner_id: "ghost".into(),
                country_code: "DE".into(),
                ..Default::default()
            }),
            dry_run: true,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());

    assert_eq!(snapshot(&h).await, before, "the dry runs changed nothing");
    let audit = [audit_of(&beta), audit_of(&acme)].concat();
    assert!(
        audit.is_empty(),
        "dry runs are not in the audit trail: {audit:?}"
    );

    // Deleted for real: the answer and the audit line say FR is left without a route.
    let deleted = admin
        .delete_route(v1::DeleteRouteRequest {
            route_id: beta_fr.clone(),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner()
        .impact
        .unwrap();
    assert!(deleted.applied);
    assert_eq!(deleted.countries_left_without_route, ["FR"]);
    assert_eq!(deleted.orders_unroutable, 2);
    assert!(
        !h.store
            .list_routes()
            .await
            .unwrap()
            .iter()
            .any(|r| r.id == beta_fr)
    );
    let audit = audit_of(&beta_fr);
    assert!(
        audit.iter().any(|line| line.contains("route deleted")
            && line.contains("countries left without a route: FR")
            && line.contains("2 of 5 recent orders rerouted (2 to none)")),
        "{audit:?}"
    );
    running.stop().await;
}

async fn replays_are_capped_and_spread_and_dry_runs_change_nothing(backend: TestBackend) {
    common::audit::capture();
    let h = Harness::new(backend).await;
    let acme = format!("replay-{}", tag(backend));
    h.partner(&acme, "DE", minutes(10), 5).await;
    let now = h.clock_now();
    // Five orders to a country nobody carries, the oldest first.
    let mut orders = Vec::new();
    for age in (1..=5).rev() {
        orders.push(h.place_at("IT", 100, now - minutes(age)).await);
    }
    let (running, mut admin) = serve(&h).await;
    settled(&h, 5, DispatchState::Unroutable).await;
    let before = snapshot(&h).await;
    let unroutable = || {
        Some(v1::DispatchFilter {
            state: DispatchState::Unroutable.into(),
            ..Default::default()
        })
    };
    let spread = Some(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    });
    let ids = |orders: &[Uuid]| orders.iter().map(Uuid::to_string).collect::<Vec<_>>();

    // A dry run over the cap: which would go and when, nothing changed.
    let dry = admin
        .retry_dispatches(v1::RetryDispatchesRequest {
            filter: unroutable(),
            dry_run: true,
            max_orders: Some(3),
            spread,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let expected = v1::RetryDispatchesResponse {
        order_ids: ids(&orders[..3]),
        applied: false,
        matched: 5,
        truncated: true,
        max_orders: 3,
        first_due_at: Some(to_timestamp(now)),
        last_due_at: Some(to_timestamp(now + chrono::Duration::seconds(40))),
    };
    assert_eq!(dry, expected);
    assert_eq!(snapshot(&h).await, before, "the dry run changed nothing");
    assert!(
        audit_of("dispatches retried").is_empty()
            || !audit_of("dispatches retried")
                .iter()
                .any(|line| line.contains(&orders[0].to_string())),
        "a dry run is not in the audit trail"
    );

    // Applied: the oldest three, due now, in 20 s and in 40 s; the other two untouched.
    let done = admin
        .retry_dispatches(v1::RetryDispatchesRequest {
            filter: unroutable(),
            max_orders: Some(3),
            spread,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        done,
        v1::RetryDispatchesResponse {
            applied: true,
            ..expected
        }
    );
    for (order, seconds) in [(orders[1], 20), (orders[2], 40)] {
        let row = h.dispatch(order).await;
        assert_eq!(
            (row.state, row.attempts, row.next_attempt_at),
            (
                DispatchState::Pending,
                0,
                now + chrono::Duration::seconds(seconds)
            ),
            "due at its place in the spread"
        );
    }
    let untouched: Vec<&DispatchRecord> = before
        .rows
        .iter()
        .filter(|row| orders[3..].contains(&row.order_id))
        .collect();
    for row in untouched {
        assert_eq!(&h.dispatch(row.order_id).await, row, "beyond the cap");
    }
    let audit = audit_of(&orders[2].to_string());
    assert!(
        audit.iter().any(|line| line.contains("dispatches retried")
            && line.contains("count=3")
            && line.contains("truncated=true")),
        "{audit:?}"
    );

    // Without a cap the default applies, and says which.
    let default = admin
        .retry_dispatches(v1::RetryDispatchesRequest {
            filter: unroutable(),
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default.max_orders, 1_000);
    assert!(!default.truncated);
    assert!(default.order_ids.contains(&orders[4].to_string()));

    // Bad bounds and ids: refused naming the field, nothing changed.
    let after = snapshot(&h).await.rows;
    let seconds = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
    for (request, field) in [
        (
            v1::RetryDispatchesRequest {
                filter: unroutable(),
                max_orders: Some(-1),
                ..Default::default()
            },
            "max_orders",
        ),
        (
            v1::RetryDispatchesRequest {
                filter: unroutable(),
                max_orders: Some(10_001),
                ..Default::default()
            },
            "max_orders",
        ),
        (
            v1::RetryDispatchesRequest {
                filter: unroutable(),
                spread: seconds(25 * 3_600),
                ..Default::default()
            },
            "spread",
        ),
        (
            v1::RetryDispatchesRequest {
                filter: unroutable(),
                spread: seconds(-1),
                ..Default::default()
            },
            "spread",
        ),
        (
            v1::RetryDispatchesRequest {
                order_ids: ids(&orders[2..5]),
                max_orders: Some(2),
                ..Default::default()
            },
            "order_ids",
        ),
        (
            v1::RetryDispatchesRequest {
                order_ids: vec![orders[3].to_string(), "order-4".into()],
                ..Default::default()
            },
            "order_ids[1]",
        ),
    ] {
        let status = admin.retry_dispatches(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(
            status.message().starts_with(&format!("{field}: ")),
            "{field}: {}",
            status.message()
        );
    }
    let unknown = Uuid::new_v4();
    let status = admin
        .retry_dispatches(v1::RetryDispatchesRequest {
            order_ids: vec![orders[3].to_string(), unknown.to_string()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
    assert!(status.message().contains(&unknown.to_string()));
    let rows = snapshot(&h).await.rows;
    for order in &orders[3..] {
        let find = |rows: &[DispatchRecord]| rows.iter().find(|r| r.order_id == *order).cloned();
        assert_eq!(
            find(&rows),
            find(&after),
            "a refused request changes nothing"
        );
    }
    running.stop().await;
}

/// Marks a key used at `at`, as StatusIngest does after an accepted report (its own test,
/// `services/status-ingest/tests/report_status.rs`, proves it does).
async fn mark_used(h: &Harness, partner: &str, key: &str, at: DateTime<Utc>) {
    const SQL: &str = "UPDATE partner_keys SET last_used_at = $3 \
                       WHERE partner_id = $1 AND key_id = $2";
    on_pool!(h.db.backend(), |pool| {
        sqlx::query(SQL)
            .bind(partner)
            .bind(key)
            .bind(Instant(at))
            .execute(pool)
            .await
            .unwrap()
            .rows_affected()
    });
}

async fn keys_show_when_they_were_last_used(backend: TestBackend) {
    let h = Harness::new(backend).await;
    let acme = format!("keyed-{}", tag(backend));
    h.partner(&acme, "DE", minutes(10), 5).await;
    let (running, mut admin) = serve(&h).await;
    for (key_id, byte) in [("k-old", 1), ("k-new", 2)] {
        admin
            .add_partner_key(v1::AddPartnerKeyRequest {
                partner_id: acme.clone(),
                key_id: key_id.into(),
                public_key: vec![byte; 32],
            })
            .await
            .unwrap();
    }
    let used = |keys: &v1::ListPartnerKeysResponse| {
        keys.keys
            .iter()
            .map(|k| (k.key_id.clone(), k.last_used_at))
            .collect::<Vec<_>>()
    };
    let list = v1::ListPartnerKeysRequest {
        partner_id: acme.clone(),
    };
    let keys = admin.list_partner_keys(list.clone()).await.unwrap();
    assert_eq!(
        used(keys.get_ref()),
        [("k-new".to_owned(), None), ("k-old".to_owned(), None)],
        "never used: unset"
    );
    let at = h.clock_now() - minutes(3);
    mark_used(&h, &acme, "k-new", at).await;
    let keys = admin.list_partner_keys(list).await.unwrap();
    assert_eq!(
        used(keys.get_ref()),
        [
            ("k-new".to_owned(), Some(to_timestamp(at))),
            ("k-old".to_owned(), None)
        ],
        "the old key is unused: safe to revoke"
    );
    running.stop().await;
}
