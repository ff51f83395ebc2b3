//! The relay's event publisher against a real database and broker: one claim walks on while
//! the previous walk is produced (Postgres), every event reaches the order-events topic once
//! and in each order's sequence, and a walk that fails is published again while the walks the
//! broker acknowledged are not; a partner's report carries every history field there.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use chrono::Duration as Span;
use common::{
    Harness, LeaseRecorder,
    fixture::{FixtureOrder, insert_orders},
};
use prost::Message;
use waybill_dispatcher::{kafka::producer::OrderProducer, metrics::RelayMetrics, relay::Relay};
use waybill_proto::v1::{OrderEvent, OrderStatus};
use waybill_test_kit::{TestBackend, broker::ConsumedMessage, eventually, on_both_backends};

on_both_backends!(
    events_of_many_walks_reach_the_topic_once_each_in_order,
    order_events_carry_every_history_field,
);

const ORDERS: usize = 12;

/// `ORDERS` orders placed, and a relay publishing `walk` events at a time through `store`.
async fn placed_orders(h: &Harness, store: Arc<LeaseRecorder>, walk: u32) -> Relay {
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    let orders: Vec<_> = (0..ORDERS)
        .map(|_| FixtureOrder::new("DE", 100, h.clock_now()))
        .collect();
    insert_orders(&h.db, &orders).await.unwrap();
    let mut settings = h.settings("dispatcher-a");
    settings.event_batch_size = walk;
    Relay::new(
        store,
        OrderProducer::new(&h.kafka()).unwrap(),
        h.broker.topic_creator(),
        Arc::new(h.clock.clone()),
        h.db.feed().clone(),
        settings,
        Arc::new(RelayMetrics::default()),
    )
}

/// Publishes until `expected` events went out and nothing is waiting (a round fails while the
/// producer reconnects, and other tests' transactions on the same Postgres server may hold
/// events back for a moment); how many events that published.
async fn publish_until(relay: &Relay, expected: usize) -> usize {
    let mut published = 0;
    for _ in 0..1_000 {
        let round = relay.publish_events().await.unwrap();
        published += round.events;
        if !round.more && published >= expected {
            return published;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{published} of {expected} events published after 1,000 rounds");
}

/// `(order, sequence, status)` of every event on the topic, in topic order.
async fn on_topic(h: &Harness, count: usize) -> Vec<(String, i64, i32)> {
    read_events(h, count, Duration::from_secs(10)).await
}

/// `(order, sequence, status)` of up to `count` events on the topic, read for at most `wait`.
async fn read_events(h: &Harness, count: usize, wait: Duration) -> Vec<(String, i64, i32)> {
    let read: Vec<ConsumedMessage> = h
        .broker
        .read_topic(&h.topics.order_events, count, wait)
        .await;
    read.iter()
        .map(|m| {
            let event = OrderEvent::decode(m.payload.as_slice()).unwrap();
            let inner = event.event.unwrap();
            (event.order_id, inner.sequence, inner.status)
        })
        .collect()
}

async fn events_of_many_walks_reach_the_topic_once_each_in_order(backend: TestBackend) {
    let h = Harness::new(backend).await;
    let store = Arc::new(LeaseRecorder::new(h.store.clone()));
    // The orders' 24 events (placed, sent) take five walks.
    let relay = placed_orders(&h, store.clone(), 5).await;
    let cycle = relay.run_cycle(false).await.unwrap();
    assert_eq!(cycle.due, ORDERS);

    let rest = 2 * ORDERS - cycle.events;
    assert_eq!(publish_until(&relay, rest).await, rest);
    if backend == TestBackend::Postgres {
        assert!(
            store.walks.load(Ordering::SeqCst) > 0,
            "claims walked on while their events were produced"
        );
    }
    let events = on_topic(&h, 2 * ORDERS).await;
    assert_eq!(events.len(), 2 * ORDERS, "{events:?}");
    let mut next_seq: HashMap<&str, i64> = HashMap::new();
    for (order, seq, status) in &events {
        let expected = next_seq.entry(order).or_insert(1);
        assert_eq!(seq, expected, "{order}'s events once each, in sequence");
        let status_wanted = match seq {
            1 => OrderStatus::Placed,
            _ => OrderStatus::SentToPartner,
        };
        assert_eq!(*status, status_wanted as i32);
        *expected += 1;
    }
    assert_eq!(next_seq.len(), ORDERS);
}

#[tokio::test]
async fn a_failed_walk_is_published_again_and_the_acknowledged_walks_are_not() {
    let h = Arc::new(Harness::new(TestBackend::Postgres).await);
    waybill_test_kit::require!(
        h.broker.set_available(true),
        "this broker cannot be taken down (WAYBILL_TEST_BROKER=mock can)"
    );
    // The broker goes down as the claim reads its second further walk: by then the claim's
    // own walk is acknowledged, and the first further walk (being produced right then) or the
    // second fails.
    let mut recorder = LeaseRecorder::new(h.store.clone());
    let harness = h.clone();
    recorder.before_walk = Some(Arc::new(move |walk| {
        if walk == 2 {
            assert!(harness.broker.set_available(false));
        }
    }));
    let store = Arc::new(recorder);
    // The orders' 12 placed events, three at a time.
    let walk = 3;
    let relay = placed_orders(&h, store.clone(), walk).await;

    let mut acknowledged = 0;
    // Until the broker went down (other tests' transactions may cut a claim's walks short).
    for _ in 0..1_000 {
        acknowledged += relay.publish_events().await.unwrap().events;
        if store.walks.load(Ordering::SeqCst) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        store.walks.load(Ordering::SeqCst) >= 2,
        "the claim walked twice"
    );
    assert!(
        acknowledged >= walk as usize && acknowledged < ORDERS,
        "the claim's own walk was acknowledged, not all: {acknowledged}"
    );

    assert!(h.broker.set_available(true));
    assert_eq!(
        publish_until(&relay, ORDERS - acknowledged).await,
        ORDERS - acknowledged,
        "the cursor moved past the acknowledged walks only"
    );
    // The failed walk may have reached the topic in part before it failed, so its events can
    // be there twice: read everything (every event was acknowledged by now), then count each
    // event once.
    let mut events = read_events(&h, ORDERS * 2, Duration::from_secs(5)).await;
    events.sort();
    events.dedup();
    assert_eq!(events.len(), ORDERS, "every event reached the topic");
}

/// A partner's report reaches the order-events topic with every field `WatchOrder` shows:
/// detail, tracking id, detail code, action required, needs review, both times.
async fn order_events_carry_every_history_field(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    let order = h.place("DE", 1_000).await;
    let relay = h.relay("dispatcher-a");
    relay.run_cycle(true).await.unwrap();
    h.report(order, "EXCEPTION", "acme").await;
    let (detail, code, tracking) = ("address not found", "ADDRESS_NOT_FOUND", "AC123");
    let fill = "UPDATE order_status_events SET detail = $2, detail_code = $3, tracking_id = $4, \
                action_required = TRUE, needs_review = TRUE \
                WHERE order_id = $1 AND status = 'EXCEPTION'";
    waybill_service_kit::on_pool!(h.db.backend(), |pool| {
        sqlx::query(fill)
            .bind(waybill_service_kit::db::Id(order))
            .bind(detail)
            .bind(code)
            .bind(tracking)
            .execute(pool)
            .await
            .unwrap();
    });
    // Published by the next walk, or a moment later when a transaction of another test on the
    // same Postgres server holds it back (the publisher's watermark, migration 0006).
    let reported = eventually(
        Duration::from_secs(30),
        "the EXCEPTION event on the order-events topic",
        || async {
            relay.publish_events().await.unwrap();
            h.broker
                .read_topic(&h.topics.order_events, 3, Duration::from_secs(1))
                .await
                .iter()
                .map(|m| OrderEvent::decode(m.payload.as_slice()).unwrap())
                .find_map(|e| {
                    e.event
                        .filter(|e| e.status == OrderStatus::Exception as i32)
                })
        },
    )
    .await;
    assert_eq!(reported.order_id, order.to_string());
    assert_eq!(reported.partner_id, "acme");
    assert_eq!(reported.sequence, 3);
    assert_eq!(
        (
            reported.detail.as_str(),
            reported.detail_code.as_str(),
            reported.tracking_id.as_str()
        ),
        (detail, code, tracking)
    );
    assert!(
        reported.action_required && reported.needs_review,
        "{reported:?}"
    );
    assert!(reported.occurred_at.is_some() && reported.recorded_at.is_some());
}
