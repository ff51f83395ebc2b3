//! The relay against a real database (Postgres and SQLite) and a real Kafka-protocol broker:
//! what reaches the topics, retries and DEAD, fencing, handover deadlines, routing changes.
//! Several instances together are in `relay_instances.rs`.
#![allow(clippy::unwrap_used)]

mod common;

use std::{collections::HashSet, sync::Arc, time::Duration};

use chrono::Duration as Span;
use common::{
    Harness,
    fixture::{FixtureOrder, insert_orders},
};
use prost::Message;
use tokio_util::sync::CancellationToken;
use waybill_dispatcher::{DispatcherDeps, RelaySettings, domain::model::DispatchFilter};
use waybill_proto::{
    headers,
    v1::{DispatchState, DispatchedOrder, OrderEvent, OrderStatus},
};
use waybill_service_kit::{clock::SystemClock, grpc::ServerLimits};
use waybill_test_kit::{TestBackend, eventually, on_both_backends};

on_both_backends!(
    produces_key_payload_headers_audit_and_events,
    unroutable_orders_are_listed_not_dropped,
    broker_outage_retries_with_growing_delays_then_sends_all,
    lease_fence_refuses_a_late_instance,
    attempt_budget_ends_dead_and_operator_retry_sends,
    route_change_applies_to_the_next_order,
    unacknowledged_orders_are_resent_then_flagged,
    serve_is_woken_by_a_new_order_not_by_its_poll,
    every_order_sent_wakes_its_watchers,
);

async fn produces_key_payload_headers_audit_and_events(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    let small = h.place("DE", 999_999).await;
    let audited = h.place("DE", 1_000_000).await;
    let relay = h.relay("dispatcher-a");

    let report = relay.run_cycle(true).await.unwrap();
    assert_eq!(report.due, 2);

    for id in [small, audited] {
        let row = h.dispatch(id).await;
        assert_eq!(row.state, DispatchState::Sent);
        assert_eq!(row.partner_id.as_deref(), Some("acme"));
        assert_eq!(
            row.route_id.as_deref(),
            Some("acme-DE"),
            "the matching rule is recorded"
        );
        assert_eq!(row.ack_due_at, Some(h.clock_now() + Span::minutes(10)));
        assert_eq!(row.lease_owner, None);
        let history = h.history(id).await;
        assert_eq!(
            history,
            [
                (1, "PLACED".to_owned(), String::new()),
                (2, "SENT_TO_PARTNER".to_owned(), "acme".to_owned())
            ]
        );
    }

    let on_topic = h
        .broker
        .read_topic(&h.topics.partner_topic("acme"), 2, Duration::from_secs(10))
        .await;
    assert_eq!(on_topic.len(), 2);
    let message = on_topic
        .iter()
        .find(|m| m.key == small.to_string())
        .expect("keyed by order id");
    let payload = DispatchedOrder::decode(message.payload.as_slice()).unwrap();
    assert_eq!(payload.order_id, small.to_string());
    assert_eq!(payload.partner_id, "acme");
    assert_eq!(payload.send_count, 1);
    assert_eq!(payload.reply_to, "http://ingest.test:50053");
    assert_eq!(payload.region, "eu-test");
    assert_eq!(
        payload
            .total
            .as_ref()
            .map(|m| (m.currency_code.as_str(), m.minor_units)),
        Some(("USD", 999_999))
    );
    assert_eq!(payload.lines.len(), 1);
    assert_eq!(
        payload.ship_to.as_ref().map(|a| a.country_code.as_str()),
        Some("DE")
    );
    assert_eq!(
        payload.recipient.as_ref().map(|r| r.email.as_str()),
        Some("ada@example.com")
    );
    let header = |name: &str| message.headers.get(name).cloned().unwrap_or_default();
    assert_eq!(
        header(headers::MESSAGE_TYPE),
        headers::TYPE_DISPATCHED_ORDER
    );
    assert_eq!(
        header(headers::SCHEMA_VERSION_HEADER),
        headers::SCHEMA_VERSION
    );
    assert_eq!(header(headers::CORRELATION_ID), small.to_string());
    assert_eq!(header(headers::REPLY_TO), "http://ingest.test:50053");
    assert_eq!(header(headers::REGION), "eu-test");
    assert!(
        header(headers::TRACEPARENT).starts_with("00-"),
        "trace context rides along"
    );

    let audit = h
        .broker
        .read_topic(&h.topics.audit, 2, Duration::from_secs(3))
        .await;
    assert_eq!(
        audit.iter().map(|m| m.key.clone()).collect::<Vec<_>>(),
        [audited.to_string()],
        "only the order at the threshold"
    );
    assert_eq!(
        audit[0]
            .headers
            .get(headers::MESSAGE_TYPE)
            .map(String::as_str),
        Some(headers::TYPE_AUDIT_ORDER)
    );

    // PLACED and SENT_TO_PARTNER of both orders, published by that cycle, or a moment later
    // when a transaction of another test on the same Postgres server held them back (the
    // publisher's watermark, migration 0006): the relay's loop publishes again at once then.
    for _ in 0..500 {
        if !relay.publish_events().await.unwrap().more {
            break;
        }
    }
    let events = h
        .broker
        .read_topic(&h.topics.order_events, 4, Duration::from_secs(10))
        .await;
    let mut seen: Vec<(String, i32, i64)> = events
        .iter()
        .map(|m| {
            let event = OrderEvent::decode(m.payload.as_slice()).unwrap();
            let inner = event.event.unwrap();
            (event.order_id, inner.status, inner.sequence)
        })
        .collect();
    seen.sort();
    let mut expected = vec![
        (small.to_string(), OrderStatus::Placed as i32, 1),
        (small.to_string(), OrderStatus::SentToPartner as i32, 2),
        (audited.to_string(), OrderStatus::Placed as i32, 1),
        (audited.to_string(), OrderStatus::SentToPartner as i32, 2),
    ];
    expected.sort();
    assert_eq!(seen, expected);
}

async fn unroutable_orders_are_listed_not_dropped(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    let lost = h.place("FR", 1_000).await;
    h.relay("dispatcher-a").run_cycle(true).await.unwrap();

    let row = h.dispatch(lost).await;
    assert_eq!(row.state, DispatchState::Unroutable);
    assert!(
        row.last_error.unwrap_or_default().contains("FR"),
        "the reason names the destination"
    );
    let listed = h
        .store
        .list_dispatches(
            &DispatchFilter {
                state: Some(DispatchState::Unroutable),
                partner_id: None,
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|r| r.order_id).collect::<Vec<_>>(),
        [lost]
    );
    assert_eq!(h.history(lost).await.len(), 1, "still only PLACED");
}

async fn broker_outage_retries_with_growing_delays_then_sends_all(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    waybill_test_kit::require!(
        h.broker.set_available(false),
        "this broker cannot be taken down (WAYBILL_TEST_BROKER=mock can)"
    );
    let mut settings = h.settings("dispatcher-a");
    settings.attempt_budget = 10;
    let relay = h.relay_with("dispatcher-a", Arc::new(h.clock.clone()), settings);
    let orders: Vec<_> = (0..5)
        .map(|_| FixtureOrder::new("DE", 500, h.clock_now()))
        .collect();
    insert_orders(&h.db, &orders).await.unwrap();

    // Base 1 s, doubling: 1 s, 2 s, 4 s after the first, second and third failure.
    for (failures, delay) in [(1, 1), (2, 2), (3, 4)] {
        let report = relay.run_cycle(true).await.unwrap();
        assert_eq!(report.due, 5, "every order was tried");
        for order in &orders {
            let row = h.dispatch(order.id).await;
            assert_eq!(row.state, DispatchState::Retrying);
            assert_eq!(row.attempts, failures);
            assert_eq!(row.next_attempt_at, h.clock_now() + Span::seconds(delay));
            assert!(row.last_error.is_some());
        }
        // Not due yet: nothing is leased before the delay has passed.
        h.clock
            .advance(Span::seconds(delay) - Span::milliseconds(1));
        assert_eq!(relay.run_cycle(true).await.unwrap().due, 0);
        h.clock.advance(Span::milliseconds(1));
    }

    assert!(h.broker.set_available(true));
    let report = relay.run_cycle(true).await.unwrap();
    assert_eq!(report.due, 5);
    for order in &orders {
        let row = h.dispatch(order.id).await;
        assert_eq!(row.state, DispatchState::Sent, "none is lost");
        assert_eq!(row.attempts, 0);
    }
    let on_topic = h
        .broker
        .read_topic(&h.topics.partner_topic("acme"), 5, Duration::from_secs(10))
        .await;
    let keys: HashSet<String> = on_topic.iter().map(|m| m.key.clone()).collect();
    assert_eq!(keys, orders.iter().map(|o| o.id.to_string()).collect());
    let (_, attempts) = h.store.get_dispatch(orders[0].id).await.unwrap().unwrap();
    // The log stays proportional to what an operator needs: the first failure of the run and
    // the success (the row kept the count and the latest error while it failed).
    assert_eq!(
        attempts.len(),
        2,
        "the first failure and the success are logged, not every failure"
    );
    assert!(attempts[0].error.is_empty() && !attempts[1].error.is_empty());
}

async fn lease_fence_refuses_a_late_instance(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    let order = h.place("DE", 700).await;
    // A short lease: on Postgres it is the server that ends it, by the wall clock.
    let first = h.relay_with(
        "dispatcher-a",
        Arc::new(h.clock.clone()),
        RelaySettings {
            lease: Duration::from_millis(500),
            ..h.settings("dispatcher-a")
        },
    );
    let second = h.relay("dispatcher-b");

    // The first instance leases and produces, then stalls before its bookkeeping.
    let batch = first.lease_due().await.unwrap();
    assert_eq!(batch.orders().len(), 1);
    let outcome = first.produce(&batch).await.unwrap();
    assert!(h.held(order).await, "leased");

    // While the lease runs, nobody else takes the order.
    assert_eq!(second.run_cycle(true).await.unwrap().due, 0);
    // After it ends (SQLite: its expiry passes; Postgres: the server ends the lease's
    // transaction, idle for longer than the lease), the second instance sends it (a duplicate
    // on the topic is allowed).
    h.clock.advance(Span::seconds(1));
    eventually(
        Duration::from_secs(10),
        "the second instance takes the order over",
        || async { (second.run_cycle(true).await.unwrap().due == 1).then_some(()) },
    )
    .await;
    let row = h.dispatch(order).await;
    assert_eq!(row.state, DispatchState::Sent);

    // The first instance's late bookkeeping is refused by the fence.
    let report = first.record(batch, &outcome).await.unwrap();
    assert!(report.applied.is_empty());
    assert_eq!(report.fenced, [order]);
    assert_eq!(
        h.dispatch(order).await,
        row,
        "the row is as the second instance left it"
    );
    let history = h.history(order).await;
    assert_eq!(
        history
            .iter()
            .filter(|(_, s, _)| s == "SENT_TO_PARTNER")
            .count(),
        1,
        "no duplicate event"
    );
    let on_topic = h
        .broker
        .read_topic(&h.topics.partner_topic("acme"), 2, Duration::from_secs(10))
        .await;
    assert_eq!(
        on_topic
            .iter()
            .filter(|m| m.key == order.to_string())
            .count(),
        2
    );
}

async fn attempt_budget_ends_dead_and_operator_retry_sends(backend: TestBackend) {
    let h = Harness::new(backend).await;
    // A topic the broker does not have and cannot auto-create fails every send.
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    let order = h.place("DE", 700).await;
    let relay = h.relay("dispatcher-a");
    waybill_test_kit::require!(
        h.broker.set_available(false),
        "this broker cannot be taken down (WAYBILL_TEST_BROKER=mock can)"
    );
    for failures in 1..=4 {
        assert_eq!(relay.run_cycle(true).await.unwrap().due, 1);
        let row = h.dispatch(order).await;
        assert_eq!(row.attempts, failures);
        if failures < 4 {
            assert_eq!(row.state, DispatchState::Retrying);
            h.clock.set(row.next_attempt_at);
        } else {
            assert_eq!(row.state, DispatchState::Dead, "the budget of 4 is spent");
            assert!(row.last_error.is_some(), "the last error is kept");
        }
    }
    h.clock.advance(Span::hours(2));
    assert_eq!(
        relay.run_cycle(true).await.unwrap().due,
        0,
        "DEAD is never retried by itself"
    );

    h.broker.set_available(true);
    let retried = h
        .store
        .retry(&[order], &DispatchFilter::default(), h.clock_now())
        .await
        .unwrap();
    assert_eq!(retried, [order]);
    let row = h.dispatch(order).await;
    assert_eq!((row.state, row.attempts), (DispatchState::Pending, 0));
    assert_eq!(relay.run_cycle(true).await.unwrap().due, 1);
    assert_eq!(h.dispatch(order).await.state, DispatchState::Sent);
}

async fn route_change_applies_to_the_next_order(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    h.partner("bolt", "AT", Span::minutes(10), 2).await;
    // The routing table is read once and kept while partners and routes are unchanged.
    let store = Arc::new(common::LeaseRecorder::new(h.store.clone()));
    let reads = || {
        store
            .routing_reads
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let clock = Arc::new(h.clock.clone());
    let relay = h.relay_over(store.clone(), clock, h.settings("dispatcher-a"));
    let harness = &h;
    let routed = |order| async move { harness.dispatch(order).await.partner_id };
    let before = h.place("DE", 100).await;
    relay.run_cycle(true).await.unwrap();
    assert_eq!(routed(before).await.as_deref(), Some("acme"));
    let unchanged = h.place("DE", 100).await;
    relay.run_cycle(true).await.unwrap();
    assert_eq!(routed(unchanged).await.as_deref(), Some("acme"));
    assert_eq!(reads(), 1, "routes unchanged: the kept table");

    // A better route for DE, at runtime: no restart.
    h.route("de-via-bolt", "bolt", "DE", 1).await;
    let after = h.place("DE", 100).await;
    relay.run_cycle(true).await.unwrap();
    let row = h.dispatch(after).await;
    assert_eq!(row.partner_id.as_deref(), Some("bolt"));
    assert_eq!(row.route_id.as_deref(), Some("de-via-bolt"));
    assert_eq!(reads(), 2);
    let on_topic = h
        .broker
        .read_topic(&h.topics.partner_topic("bolt"), 1, Duration::from_secs(10))
        .await;
    assert_eq!(on_topic[0].key, after.to_string());

    // An operator's own SQL counts too: the route disabled by hand sends DE back to acme.
    waybill_service_kit::on_pool!(h.db.backend(), |pool| {
        sqlx::query("UPDATE routes SET enabled = FALSE WHERE id = 'de-via-bolt'")
            .execute(pool)
            .await
            .unwrap();
    });
    let by_hand = h.place("DE", 100).await;
    relay.run_cycle(true).await.unwrap();
    assert_eq!(routed(by_hand).await.as_deref(), Some("acme"));
    assert_eq!(reads(), 3);
}

async fn unacknowledged_orders_are_resent_then_flagged(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    let silent = h.place("DE", 100).await;
    let confirmed = h.place("DE", 100).await;
    let relay = h.relay("dispatcher-a");
    relay.run_cycle(true).await.unwrap();
    h.report(confirmed, "RECEIVED_BY_PARTNER", "acme").await;

    // Just before the deadline nothing happens.
    h.clock.advance(Span::minutes(10) - Span::milliseconds(1));
    assert_eq!(relay.run_cycle(true).await.unwrap().overdue, 0);

    for resend in 1..=2 {
        h.clock.advance(Span::minutes(10));
        relay.run_cycle(true).await.unwrap();
        let row = h.dispatch(silent).await;
        assert_eq!(
            (row.state, row.resends),
            (DispatchState::Sent, resend),
            "re-sent after the deadline"
        );
        assert_eq!(row.ack_due_at, Some(h.clock_now() + Span::minutes(10)));
        if resend == 1 {
            assert_eq!(
                h.dispatch(confirmed).await.state,
                DispatchState::Acknowledged
            );
        }
    }
    h.clock.advance(Span::minutes(10));
    relay.run_cycle(true).await.unwrap();
    let row = h.dispatch(silent).await;
    assert_eq!(
        row.state,
        DispatchState::Unacknowledged,
        "flagged after the resend budget"
    );
    assert!(
        row.last_error
            .unwrap_or_default()
            .contains("did not confirm")
    );

    let on_topic = h
        .broker
        .read_topic(&h.topics.partner_topic("acme"), 5, Duration::from_secs(5))
        .await;
    let mut counts: Vec<i32> = on_topic
        .iter()
        .filter(|m| m.key == silent.to_string())
        .map(|m| {
            DispatchedOrder::decode(m.payload.as_slice())
                .unwrap()
                .send_count
        })
        .collect();
    counts.sort();
    assert_eq!(counts, [1, 2, 3], "same key, growing send count");
    assert_eq!(
        on_topic
            .iter()
            .filter(|m| m.key == confirmed.to_string())
            .count(),
        1
    );
    let sent_events = h
        .history(silent)
        .await
        .iter()
        .filter(|(_, s, _)| s == "SENT_TO_PARTNER")
        .count();
    assert_eq!(sent_events, 1, "re-sends do not repeat the history event");
}

async fn serve_is_woken_by_a_new_order_not_by_its_poll(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut settings = h.settings("dispatcher-a");
    // A long poll interval: only the wake-up by the placing commit can send the order within
    // the 5 s below (a wall-time figure in milliseconds would flake on a busy 2-core CI).
    settings.poll_interval = Duration::from_secs(30);
    let deps = DispatcherDeps {
        db: h.db.clone(),
        clock: Arc::new(SystemClock),
        kafka: h.kafka(),
        topic_creator: h.broker.topic_creator(),
        relay: settings,
        limits: ServerLimits::default(),
        shutdown_grace: Duration::from_secs(5),
        metrics: Default::default(),
    };
    let server = tokio::spawn(waybill_dispatcher::serve(listener, deps, shutdown.clone()));
    // Warm up the producer's connection, as a running service would be.
    let warm = h.place_at("DE", 1, chrono::Utc::now()).await;
    eventually(
        Duration::from_secs(10),
        "the warm-up order sent",
        || async { (h.dispatch(warm).await.state == DispatchState::Sent).then_some(()) },
    )
    .await;

    let placed_at = chrono::Utc::now();
    let order = h.place_at("DE", 100, placed_at).await;
    let sent_at = eventually(Duration::from_secs(5), "the order sent", || async {
        h.dispatch(order).await.sent_at
    })
    .await;
    let took = sent_at - placed_at;
    assert!(
        took < Span::seconds(5),
        "on the topic {took} after placing: the relay waited for its poll"
    );
    let on_topic = h
        .broker
        .read_topic(&h.topics.partner_topic("acme"), 2, Duration::from_secs(10))
        .await;
    assert!(on_topic.iter().any(|m| m.key == order.to_string()));

    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// Watchers (`WatchOrder` in Orders, another process on Postgres) hear of every order the
/// relay sends, also when one notification carries many orders (Postgres: 200 to a payload, so
/// 450 orders make three).
async fn every_order_sent_wakes_its_watchers(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    let mut placed = HashSet::new();
    for _ in 0..450 {
        placed.insert(h.place("DE", 100).await);
    }
    let mut changes = h.db.feed().subscribe();
    let report = h.relay("dispatcher-a").run_cycle(false).await.unwrap();
    assert_eq!(report.due, 450);

    let mut woken = HashSet::new();
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        while woken.len() < placed.len() {
            if let waybill_service_kit::db::Change::OrderStatus(id) = changes.recv().await.unwrap()
            {
                woken.insert(id);
            }
        }
    })
    .await;
    assert!(
        heard.is_ok(),
        "{} of {} sent orders woke their watchers",
        woken.len(),
        placed.len()
    );
    assert_eq!(woken, placed);
}
