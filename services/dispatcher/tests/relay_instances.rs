//! Several relay instances on one database (Postgres and SQLite) and a real Kafka-protocol
//! broker: two dispatchers drain the outbox together without leasing a row twice, and one that
//! shuts down gives its leases to the next at once; within one instance, a steady flow of new
//! orders goes out through one lease at a time and a backlog through several at once.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::HashSet,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use chrono::Duration as Span;
use common::{
    Harness,
    fixture::{FixtureOrder, insert_orders},
};
use tokio_util::sync::CancellationToken;
use waybill_dispatcher::{
    DispatcherDeps, kafka::producer::OrderProducer, metrics::RelayMetrics, relay::Relay,
};
use waybill_proto::v1::DispatchState;
use waybill_service_kit::{clock::SystemClock, grpc::ServerLimits};
use waybill_test_kit::{TestBackend, eventually, on_both_backends};

on_both_backends!(
    two_dispatchers_drain_5000_orders_without_double_leases,
    shutdown_releases_leases_for_the_next_instance,
    a_flow_is_leased_by_one_loop_and_a_backlog_by_several,
);

/// `Some` once exactly `count` orders are `SENT`.
async fn all_sent(h: &Harness, count: i64) -> Option<()> {
    let backlog = h.store.backlog(chrono::Utc::now()).await.unwrap();
    let sent = backlog
        .by_state
        .iter()
        .find(|(s, _)| *s == DispatchState::Sent)
        .map_or(0, |(_, n)| *n);
    (sent == count).then_some(())
}

async fn two_dispatchers_drain_5000_orders_without_double_leases(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    let orders: Vec<_> = (0..5_000)
        .map(|_| FixtureOrder::new("DE", 100, chrono::Utc::now()))
        .collect();
    insert_orders(&h.db, &orders).await.unwrap();

    let recorder = Arc::new(common::LeaseRecorder::new(h.store.clone()));
    let shutdown = CancellationToken::new();
    let mut runs = Vec::new();
    for instance in ["dispatcher-a", "dispatcher-b"] {
        let mut settings = h.settings(instance);
        settings.batch_size = 250;
        let relay = Relay::new(
            recorder.clone(),
            OrderProducer::new(&h.kafka()).unwrap(),
            h.broker.topic_creator(),
            Arc::new(SystemClock),
            h.db.feed().clone(),
            settings,
            Arc::new(RelayMetrics::default()),
        );
        runs.push(tokio::spawn(
            relay.run(shutdown.clone(), Duration::from_secs(5)),
        ));
    }
    eventually(Duration::from_secs(120), "5000 orders sent", || {
        all_sent(&h, 5_000)
    })
    .await;
    shutdown.cancel();
    for run in runs {
        run.await.unwrap();
    }

    // No row was leased twice (no lease expired during the run, so any second lease of a row
    // would have been a lease of a row already held).
    let leased = recorder.leased.lock().unwrap().clone();
    assert_eq!(leased.len(), 5_000);
    assert_eq!(
        leased
            .iter()
            .map(|(id, _)| id)
            .collect::<HashSet<_>>()
            .len(),
        5_000
    );
    let by_a = leased
        .iter()
        .filter(|(_, owner)| owner == "dispatcher-a")
        .count();
    assert!(
        by_a > 0 && by_a < 5_000,
        "both dispatchers leased: a took {by_a}"
    );
    // Each order was recorded sent exactly once, and is on the partner's topic.
    assert_eq!(h.sent_events().await, 5_000);
    let on_topic = h
        .broker
        .read_topic(
            &h.topics.partner_topic("acme"),
            5_000,
            Duration::from_secs(15),
        )
        .await;
    let keys: HashSet<&str> = on_topic.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(
        keys,
        orders
            .iter()
            .map(|o| o.id.to_string())
            .collect::<HashSet<_>>()
            .iter()
            .map(String::as_str)
            .collect()
    );
}

async fn shutdown_releases_leases_for_the_next_instance(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    // The broker is down, so the batch is stuck in flight when shutdown comes.
    waybill_test_kit::require!(
        h.broker.set_available(false),
        "this broker cannot be taken down (WAYBILL_TEST_BROKER=mock can)"
    );
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let deps = DispatcherDeps {
        db: h.db.clone(),
        clock: Arc::new(SystemClock),
        kafka: h.broker.kafka_settings(Duration::from_secs(20)),
        topic_creator: h.broker.topic_creator(),
        relay: h.settings("dispatcher-a"),
        limits: ServerLimits::default(),
        shutdown_grace: Duration::from_millis(200),
        metrics: Default::default(),
    };
    let server = tokio::spawn(waybill_dispatcher::serve(listener, deps, shutdown.clone()));
    let order = h.place_at("DE", 100, chrono::Utc::now()).await;
    eventually(
        Duration::from_secs(10),
        "the order leased by dispatcher-a",
        || async { h.held(order).await.then_some(()) },
    )
    .await;

    let stopping = tokio::time::Instant::now();
    shutdown.cancel();
    server.await.unwrap().unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "shutdown is bounded by the grace and the flush timeout"
    );
    let row = h.dispatch(order).await;
    assert_eq!(
        (row.state, row.attempts, row.lease_owner),
        (DispatchState::Pending, 0, None),
        "released, not failed"
    );
    // (A Postgres lease's transaction is rolled back as its connection returns to the pool,
    // right after the abandoned batch is dropped.)
    eventually(Duration::from_secs(5), "the lease released", || async {
        (!h.held(order).await).then_some(())
    })
    .await;

    // Another instance takes it at once, without waiting for the lease to expire.
    h.broker.set_available(true);
    let next = h.relay_with(
        "dispatcher-b",
        Arc::new(SystemClock),
        h.settings("dispatcher-b"),
    );
    assert_eq!(next.run_cycle(true).await.unwrap().due, 1);
    assert_eq!(h.dispatch(order).await.state, DispatchState::Sent);
}

/// Orders committed while the relay's first loop holds a lease wait for its next lease rather
/// than waking the other loops (each of which would lease one or two rows in a transaction of
/// its own); a batch that comes back full wakes them, and they lease beside it.
async fn a_flow_is_leased_by_one_loop_and_a_backlog_by_several(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    let recorder = Arc::new(common::LeaseRecorder::new(h.store.clone()));
    let pause = |ms| recorder.lease_pause_ms.store(ms, Ordering::SeqCst);
    pause(100);
    let mut settings = h.settings("dispatcher-a");
    settings.batch_size = 20;
    settings.batches_in_flight = 4;
    // Woken by commits and full batches only: no loop polls during the test.
    settings.poll_interval = Duration::from_secs(600);
    let relay = h.relay_over(recorder.clone(), Arc::new(SystemClock), settings);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(relay.run(shutdown.clone(), Duration::from_secs(5)));
    // Every loop's first cycle (at start, before any order) is over.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A flow: one order every 25 ms, four or so to each lease's 100 ms.
    for _ in 0..12 {
        h.place_at("DE", 100, chrono::Utc::now()).await;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    eventually(Duration::from_secs(20), "12 orders sent", || {
        all_sent(&h, 12)
    })
    .await;
    assert_eq!(
        recorder.most_in_flight.load(Ordering::SeqCst),
        1,
        "a flow that one loop keeps up with is leased one lease at a time"
    );

    // A backlog: five batches' worth placed while the first loop holds a lease of one.
    pause(1_000);
    let orders: Vec<_> = (0..100)
        .map(|_| FixtureOrder::new("DE", 100, chrono::Utc::now()))
        .collect();
    insert_orders(&h.db, &orders).await.unwrap();
    eventually(Duration::from_secs(30), "112 orders sent", || {
        all_sent(&h, 112)
    })
    .await;
    let most = recorder.most_in_flight.load(Ordering::SeqCst);
    assert!(
        most >= 2,
        "full batches leased side by side: {most} at most"
    );
    shutdown.cancel();
    run.await.unwrap();
    assert_eq!(
        recorder.leased.lock().unwrap().len(),
        112,
        "no row leased twice"
    );
}
