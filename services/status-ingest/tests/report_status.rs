//! `ReportStatus` over real gRPC on loopback, on Postgres and SQLite: what a partner and an
//! operator would check — accepted reports seen by a `WatchOrder` client, replays (also after a
//! restart), key rotation (with when each key was last used), duplicates, rejections. Refusals are in `refusals.rs`.
#![allow(clippy::unwrap_used)]

mod common;

use chrono::{DateTime, Duration, Utc};
use common::{
    World,
    service::{Service, report, request, world},
    signer, token_for,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};
use waybill_proto::{
    time::to_timestamp,
    v1::{self as pb, OrderStatus, order_service_client::OrderServiceClient},
};
use waybill_service_kit::{db::Instant, grpc::ServerLimits, on_pool};
use waybill_status_ingest::IngestDeps;
use waybill_test_kit::{TestBackend, on_both_backends};
use waybill_token::Report;

on_both_backends!(
    a_valid_report_reaches_history_order_and_watchers_and_ends_the_handover,
    a_replayed_token_is_refused_also_after_a_restart,
    key_rotation_keeps_old_tokens_until_revoked,
    duplicates_out_of_order_after_delivered_and_rejection,
    health_reports_serving_until_shutdown,
);

async fn a_valid_report_reaches_history_order_and_watchers_and_ends_the_handover(
    backend: TestBackend,
) {
    let (world, order, acme) = world(backend).await;
    let ingest = Service::start(world.deps()).await;
    // Orders on the same database: a WatchOrder client follows the history.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let orders_addr = listener.local_addr().unwrap();
    let orders_shutdown = CancellationToken::new();
    let orders_task = tokio::spawn(waybill_orders::serve(
        listener,
        waybill_orders::OrdersDeps::new(&world.db, "local"),
        ServerLimits::default(),
        orders_shutdown.clone(),
    ));
    let mut orders = OrderServiceClient::connect(format!("http://{orders_addr}"))
        .await
        .unwrap();
    let mut watch = orders
        .watch_order(pb::WatchOrderRequest {
            order_id: order.to_string(),
            after_sequence: 2,
        })
        .await
        .unwrap()
        .into_inner();

    let occurred = world.now() - Duration::seconds(42);
    let received = Report {
        detail_code: "AWAITING_PICKUP".into(),
        action_required: true,
        ..report(
            order,
            "acme",
            "r-1",
            OrderStatus::ReceivedByPartner,
            "1Z999",
            occurred,
        )
    };
    let response = ingest
        .client
        .clone()
        .report_status(request(&received, token_for(&acme, &received, world.now())))
        .await
        .unwrap()
        .into_inner();
    assert!(!response.duplicate);

    let event = tokio::time::timeout(std::time::Duration::from_secs(5), watch.message())
        .await
        .expect("the watcher is woken within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(event.status(), OrderStatus::ReceivedByPartner);
    assert_eq!(
        (
            event.sequence,
            event.partner_id.as_str(),
            event.tracking_id.as_str()
        ),
        (3, "acme", "1Z999")
    );
    assert_eq!(
        event.occurred_at,
        Some(to_timestamp(occurred)),
        "the partner's time"
    );
    assert_eq!(event.detail, "scanned at the depot");
    assert_eq!(
        (
            event.detail_code.as_str(),
            event.action_required,
            event.needs_review
        ),
        ("AWAITING_PICKUP", true, false)
    );

    let fetched = orders
        .get_order(pb::GetOrderRequest {
            order_id: order.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.tracking_id, "1Z999");
    assert_eq!(fetched.status(), OrderStatus::ReceivedByPartner);

    // The handover is closed: the relay's overdue scan (SENT rows past ack_due_at) no longer
    // finds the row, however late it looks.
    let dispatch = world.dispatch_row(order).await;
    assert_eq!(
        (dispatch.state.as_str(), dispatch.ack_due_at),
        ("ACKNOWLEDGED", None)
    );
    assert_eq!(ingest.stats().await.accepted, 1);

    orders_shutdown.cancel();
    let _ = orders_task.await;
    ingest.stop().await;
}

async fn a_replayed_token_is_refused_also_after_a_restart(backend: TestBackend) {
    let (world, order, acme) = world(backend).await;
    let first = Service::start(world.deps()).await;
    let r = report(
        order,
        "acme",
        "r-1",
        OrderStatus::ReceivedByPartner,
        "T1",
        world.now(),
    );
    let token = token_for(&acme, &r, world.now());
    first
        .client
        .clone()
        .report_status(request(&r, token.clone()))
        .await
        .unwrap();
    let replay = first
        .client
        .clone()
        .report_status(request(&r, token.clone()))
        .await
        .unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated);
    assert!(
        replay.message().contains("replayed"),
        "{}",
        replay.message()
    );
    first.stop().await;

    // A new instance, with its own connection pool: the guard is in the database.
    let db = world.test_db.connect().await;
    let deps = IngestDeps {
        store: waybill_status_ingest::store::for_database_with_clock(
            &db,
            std::sync::Arc::new(world.clock.clone()),
        ),
        ..world.deps()
    };
    let second = Service::start(deps).await;
    let before = world.state_of(order).await;
    let replay = second
        .client
        .clone()
        .report_status(request(&r, token))
        .await
        .unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated);
    assert_eq!(world.state_of(order).await, before);
    // A retry with a fresh token for the same report is a harmless duplicate.
    let retried = second
        .client
        .clone()
        .report_status(request(&r, token_for(&acme, &r, world.now())))
        .await
        .unwrap()
        .into_inner();
    assert!(retried.duplicate);
    second.stop().await;
}

/// When a key was last used (`partner_keys.last_used_at`, what `ListPartnerKeys` answers).
async fn last_used(world: &World, partner: &str, key: &str) -> Option<DateTime<Utc>> {
    const SQL: &str = "SELECT last_used_at FROM partner_keys WHERE partner_id = $1 AND key_id = $2";
    let at: Option<Instant> = on_pool!(world.db.backend(), |pool| {
        sqlx::query_scalar(SQL)
            .bind(partner)
            .bind(key)
            .fetch_one(pool)
            .await
            .unwrap()
    });
    at.map(Into::into)
}

async fn key_rotation_keeps_old_tokens_until_revoked(backend: TestBackend) {
    let (world, order, old) = world(backend).await;
    let ingest = Service::start(world.deps()).await;
    let new = signer(4, "k2");
    world.key("acme", &new).await;
    let unused = signer(5, "k3");
    world.key("acme", &unused).await;
    assert_eq!(last_used(&world, "acme", "k2").await, None, "not used yet");
    let now = world.now();
    let r1 = report(
        order,
        "acme",
        "r-1",
        OrderStatus::ReceivedByPartner,
        "",
        now,
    );
    let r2 = report(order, "acme", "r-2", OrderStatus::Shipped, "", now);
    ingest
        .client
        .clone()
        .report_status(request(&r1, token_for(&new, &r1, now)))
        .await
        .expect("the new key works");
    assert_eq!(
        last_used(&world, "acme", "k2").await,
        Some(now),
        "an accepted report marks its key used"
    );
    // Within the minute the use is not written again; a minute on, it is.
    world.clock.advance(Duration::seconds(30));
    let r1_again = report(
        order,
        "acme",
        "r-1",
        OrderStatus::ReceivedByPartner,
        "",
        now,
    );
    let answer = ingest
        .client
        .clone()
        .report_status(request(&r1_again, token_for(&new, &r1_again, world.now())))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.duplicate);
    assert_eq!(last_used(&world, "acme", "k2").await, Some(now));
    world.clock.advance(Duration::seconds(31));
    let later = world.now();
    ingest
        .client
        .clone()
        .report_status(request(&r2, token_for(&new, &r2, later)))
        .await
        .expect("the new key still works");
    assert_eq!(last_used(&world, "acme", "k2").await, Some(later));
    assert_eq!(
        last_used(&world, "acme", "k1").await,
        None,
        "the old key is not in use: it can be revoked"
    );
    let r2b = report(order, "acme", "r-2b", OrderStatus::Shipped, "", later);
    ingest
        .client
        .clone()
        .report_status(request(&r2b, token_for(&old, &r2b, later)))
        .await
        .expect("the old key still works");
    assert_eq!(last_used(&world, "acme", "k1").await, Some(later));
    assert_eq!(last_used(&world, "acme", "k3").await, None, "never used");
    world.revoke("acme", "k1").await;
    let now = world.now();
    let r3 = report(order, "acme", "r-3", OrderStatus::Delivered, "", now);
    let refused = ingest
        .client
        .clone()
        .report_status(request(&r3, token_for(&old, &r3, now)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("revoked"),
        "{}",
        refused.message()
    );
    ingest
        .client
        .clone()
        .report_status(request(&r3, token_for(&new, &r3, now)))
        .await
        .expect("the new key goes on");
    ingest.stop().await;
}

async fn duplicates_out_of_order_after_delivered_and_rejection(backend: TestBackend) {
    let (world, order, acme) = world(backend).await;
    let ingest = Service::start(world.deps()).await;
    let now = world.now();
    let send = |r: Report| {
        let mut client = ingest.client.clone();
        let token = token_for(&acme, &r, now);
        async move {
            client
                .report_status(request(&r, token))
                .await
                .map(|response| response.into_inner().duplicate)
        }
    };
    // Out of order: SHIPPED first, then RECEIVED; both kept in sequence with the partner's time.
    assert!(
        !send(report(
            order,
            "acme",
            "r-2",
            OrderStatus::Shipped,
            "T1",
            now - Duration::seconds(10)
        ))
        .await
        .unwrap()
    );
    assert!(
        !send(report(
            order,
            "acme",
            "r-1",
            OrderStatus::ReceivedByPartner,
            "T1",
            now - Duration::seconds(60)
        ))
        .await
        .unwrap()
    );
    // Duplicate.
    assert!(
        send(report(
            order,
            "acme",
            "r-1",
            OrderStatus::ReceivedByPartner,
            "T1",
            now - Duration::seconds(60)
        ))
        .await
        .unwrap()
    );
    assert!(
        !send(report(
            order,
            "acme",
            "r-3",
            OrderStatus::Delivered,
            "T1",
            now
        ))
        .await
        .unwrap()
    );
    // After DELIVERED: kept, flagged, nothing else changes.
    assert!(
        !send(report(
            order,
            "acme",
            "r-4",
            OrderStatus::Exception,
            "",
            now
        ))
        .await
        .unwrap()
    );
    let statuses: Vec<_> = world
        .history(order)
        .await
        .into_iter()
        .map(|e| (e.status, e.needs_review))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("PLACED".into(), false),
            ("SENT_TO_PARTNER".into(), false),
            ("SHIPPED".into(), false),
            ("RECEIVED_BY_PARTNER".into(), false),
            ("DELIVERED".into(), false),
            ("EXCEPTION".into(), true),
        ]
    );
    assert_eq!(world.order_row(order).await.status, "DELIVERED");
    let stats = ingest.stats().await;
    assert_eq!(
        (stats.accepted, stats.duplicates, stats.flagged_for_review),
        (4, 1, 1)
    );

    // A rejection puts another order back for routing, remembering who refused it.
    let second = world.order().await;
    world.route(second, "acme").await;
    let rejection = Report {
        detail_code: "OUT_OF_AREA".into(),
        ..report(
            second,
            "acme",
            "x-1",
            OrderStatus::RejectedByPartner,
            "",
            now,
        )
    };
    ingest
        .client
        .clone()
        .report_status(request(&rejection, token_for(&acme, &rejection, now)))
        .await
        .unwrap();
    let dispatch = world.dispatch_row(second).await;
    assert_eq!(
        (dispatch.state.as_str(), dispatch.partner_id),
        ("PENDING", None)
    );
    assert_eq!(world.rejections(second).await, vec!["acme".to_owned()]);
    assert_eq!(
        world.history(second).await.pop().unwrap().detail_code,
        "OUT_OF_AREA"
    );
    ingest.stop().await;
}

async fn health_reports_serving_until_shutdown(backend: TestBackend) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let (world, _, _) = world(backend).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(waybill_status_ingest::serve(
        listener,
        world.deps(),
        ServerLimits::default(),
        shutdown.clone(),
    ));
    let mut health = HealthClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let status = health
        .check(HealthCheckRequest {
            service: waybill_status_ingest::SERVICE_NAME.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: waybill_status_ingest::SERVICE_NAME.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    shutdown.cancel();
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), watch.message())
        .await
        .expect("told within 5 s");
    if let Ok(Some(response)) = next {
        assert_eq!(response.status(), ServingStatus::NotServing);
    }
    // An open watch would hold the drain for its whole grace period.
    drop((watch, health));
    task.await.unwrap().unwrap();
}
