//! The retention job on both backends: attempt-log entries older than `--retention` are
//! deleted, and so is the stored message of an order its partner acknowledged that long ago;
//! newer entries, and the messages of orders that may still be sent (flagged UNACKNOWLEDGED,
//! UNROUTABLE), are kept. Orders and their history are never touched.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use chrono::Duration as Span;
use common::Harness;
use uuid::Uuid;
use waybill_dispatcher::store::Cleaned;
use waybill_proto::v1::DispatchState;
use waybill_service_kit::{db::Id, on_pool};
use waybill_test_kit::{TestBackend, on_both_backends};

on_both_backends!(old_attempts_and_acknowledged_messages_go_and_the_rest_stays);

async fn has_message(h: &Harness, order: Uuid) -> bool {
    on_pool!(h.db.backend(), |pool| {
        sqlx::query_scalar::<_, bool>(
            "SELECT message IS NOT NULL FROM dispatch WHERE order_id = $1",
        )
        .bind(Id(order))
        .fetch_one(pool)
        .await
        .unwrap()
    })
}

async fn history_len(h: &Harness, order: Uuid) -> usize {
    h.history(order).await.len()
}

async fn old_attempts_and_acknowledged_messages_go_and_the_rest_stays(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 0).await;
    let relay = h.relay("dispatcher-a");
    assert_eq!(
        relay.settings().retention,
        Duration::from_secs(30 * 86_400),
        "the default"
    );
    let acknowledged = h.place("DE", 100).await;
    let unconfirmed = h.place("DE", 200).await;
    // No route to France: UNROUTABLE, with its reason in the attempt log.
    let unroutable = h.place("FR", 300).await;
    relay.run_cycle(true).await.unwrap();
    h.report(acknowledged, "RECEIVED_BY_PARTNER", "acme").await;
    // At the handover deadline: one confirmed (ACKNOWLEDGED), one flagged UNACKNOWLEDGED.
    h.clock.advance(Span::minutes(11));
    relay.run_cycle(true).await.unwrap();
    assert_eq!(
        h.dispatch(acknowledged).await.state,
        DispatchState::Acknowledged
    );
    assert_eq!(
        h.dispatch(unconfirmed).await.state,
        DispatchState::Unacknowledged
    );
    // Nothing is old enough yet.
    assert_eq!(relay.clean_up().await.unwrap(), Cleaned::default());

    // A month on, a new order is sent: only what is older than the retention goes.
    h.clock.advance(Span::days(30));
    let recent = h.place("FR", 400).await;
    relay.run_cycle(true).await.unwrap();
    let history_before = [
        history_len(&h, acknowledged).await,
        history_len(&h, unconfirmed).await,
    ];
    let cleaned = relay.clean_up().await.unwrap();
    assert_eq!(
        cleaned,
        Cleaned {
            attempts: 1,
            messages: 1
        }
    );
    let store = &h.store;
    let attempts = |order| async move { store.get_dispatch(order).await.unwrap().unwrap().1 };
    assert!(
        attempts(unroutable).await.is_empty(),
        "a month old: deleted"
    );
    assert_eq!(attempts(recent).await.len(), 1, "a recent entry stays");
    assert!(
        !has_message(&h, acknowledged).await,
        "acknowledged: cleared"
    );
    assert!(
        has_message(&h, unconfirmed).await,
        "may still be retried: kept"
    );
    assert!(
        has_message(&h, unroutable).await,
        "may still be retried: kept"
    );
    assert_eq!(
        [
            history_len(&h, acknowledged).await,
            history_len(&h, unconfirmed).await
        ],
        history_before,
        "the history is never touched"
    );
    let snapshot = relay.metrics().snapshot();
    assert_eq!(
        (snapshot.retention_attempts, snapshot.retention_messages),
        (1, 1)
    );
    // Done: a second run finds nothing.
    assert_eq!(relay.clean_up().await.unwrap(), Cleaned::default());
}
