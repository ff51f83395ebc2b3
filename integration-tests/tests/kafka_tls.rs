//! Kafka over TLS, as managed Kafka is reached: the dispatcher produces and a partner's
//! connector consumes through a broker whose only listener is TLS (a Tansu process behind a
//! TLS-terminating proxy that is its advertised listener, with the test's own CA), and the order
//! closes its loop. Needs `WAYBILL_TANSU_BIN` (scripts/test.sh installs Tansu).
#![allow(clippy::unwrap_used)]

#[path = "support/connector.rs"]
mod support;

use std::time::Duration;

use support::*;
use waybill_integration_tests::TestStack;
use waybill_proto::v1::OrderStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dispatcher_and_a_partner_exchange_an_order_through_a_broker_reached_over_tls() {
    logs();
    let stack = TestStack::builder()
        .status_ingest(true)
        .broker_over_tls(true)
        .poll_interval(Duration::from_millis(500))
        .start()
        .await;
    let broker = stack.broker();
    assert!(
        broker
            .client_options()
            .iter()
            .any(|(key, value)| key == "security.protocol" && value == "SSL"),
        "the stack's broker is reached over TLS"
    );
    let key = enroll(&stack, "tls-express", "DE", 7).await;
    let connector = builder(&stack, "tls-express", &key).build().await.unwrap();
    let recorder = Recorder::default();
    let running = start(connector, recorder.clone());

    let order_id = place(&stack, "DE", "").await;
    let order = wait_for_status(
        &stack,
        &order_id,
        OrderStatus::ReceivedByPartner,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(order.partner_id, "tls-express");
    assert_eq!(recorder.calls_for(&order_id), 1);
    // The partner's record went through the TLS listener too: it is on the partner topic.
    let topic = stack.topics.partner_topic("tls-express");
    let records = broker.read_topic(&topic, 1, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 1, "one record on {topic}");
    assert_eq!(records[0].key, order_id);
    running.stop().await;
}
