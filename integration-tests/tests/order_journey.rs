//! An order's journey through the real services: placed through Orders over gRPC, relayed by
//! the dispatcher from the outbox to its partner's topic on a real Kafka-protocol broker, and
//! decoded by the connector SDK exactly as a partner would.
#![allow(clippy::unwrap_used)]

use std::{sync::OnceLock, time::Duration};

use tokio_stream::StreamExt;
use tonic::Request;
use waybill_connector_sdk::decode_dispatched_order;
use waybill_integration_tests::TestStack;
use waybill_proto::{
    headers,
    time::from_timestamp,
    v1::{self as pb},
};
use waybill_service_kit::telemetry;
use waybill_test_kit::fixtures::{OrderFixture as _, sample_order};

/// The process-wide telemetry pipeline, as the `waybill` binary installs it, so spans carry
/// trace ids across services.
fn telemetry() {
    static GUARD: OnceLock<Option<telemetry::TelemetryGuard>> = OnceLock::new();
    GUARD.get_or_init(|| telemetry::init("journey-test", telemetry::LogFormat::Text).ok());
}

async fn dispatch(stack: &TestStack, order_id: &str, until: pb::DispatchState) -> pb::Dispatch {
    let what = format!("{until:?}");
    stack
        .dispatch_when(order_id, &what, |d| d.state() == until)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_order_is_on_its_partners_topic_at_once_with_key_payload_and_headers() {
    telemetry();
    let stack = TestStack::builder().start().await;
    stack.enroll_partner("contoso", "US").await;
    let mut orders = stack.orders_client().await;
    // A running dispatcher has its broker connection and the topic's metadata already: warm
    // them with a first order so the figure below is the relay's, not connection set-up.
    let warm_up = orders
        .place_order(sample_order("journey-0", "US").with_line("LAMP-DESK", 1))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    dispatch(&stack, &warm_up.id, pb::DispatchState::Sent).await;

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let mut call = Request::new(sample_order("journey-1", "US").with_line("LAMP-DESK", 2));
    call.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-b7ad6b7169203331-01")
            .parse()
            .unwrap(),
    );
    let order = orders
        .place_order(call)
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();

    let topic = stack.topics.partner_topic("contoso");
    let records = stack
        .broker()
        .read_topic(&topic, 2, Duration::from_secs(10))
        .await;
    assert_eq!(records.len(), 2, "exactly the two orders on {topic}");
    let record = records
        .iter()
        .find(|record| record.key == order.id)
        .expect("key = order id");

    // Placed → on the topic, measured by the services' own clocks (placing time → broker ack):
    // the relay polls every 30 s here, so within 5 s proves it was woken by the placing commit
    // (a figure in milliseconds would only measure how busy the CI machine is).
    let sent = dispatch(&stack, &order.id, pb::DispatchState::Sent).await;
    let placed_at = from_timestamp(order.placed_at.as_ref().unwrap()).unwrap();
    let sent_at = from_timestamp(sent.sent_at.as_ref().unwrap()).unwrap();
    let latency = sent_at - placed_at;
    println!(
        "placed → sent to partner: {} ms",
        latency.num_milliseconds()
    );
    assert!(
        latency <= chrono::Duration::seconds(5),
        "took {latency}: the relay waited for its poll"
    );
    assert_eq!(sent.partner_id, "contoso");
    assert_eq!(sent.route_id, "contoso-US");

    // Headers, as the connector SDK reads them.
    assert_eq!(
        record.headers[headers::MESSAGE_TYPE],
        headers::TYPE_DISPATCHED_ORDER
    );
    assert_eq!(
        record.headers[headers::SCHEMA_VERSION_HEADER],
        headers::SCHEMA_VERSION
    );
    assert_eq!(record.headers[headers::CORRELATION_ID], order.id);
    assert_eq!(record.headers[headers::REPLY_TO], "http://127.0.0.1:50053");
    assert_eq!(record.headers[headers::REGION], "test");
    let traceparent = &record.headers[headers::TRACEPARENT];
    assert_eq!(
        traceparent.split('-').nth(1),
        Some(trace_id),
        "one trace from storefront to partner: {traceparent}"
    );

    let header_pairs: Vec<(&str, &[u8])> = record
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let incoming = decode_dispatched_order(header_pairs.iter().copied(), &record.payload).unwrap();
    let payload = incoming.order;
    assert_eq!(payload.order_id, order.id);
    assert_eq!(payload.partner_id, "contoso");
    assert_eq!(payload.total, order.total);
    assert_eq!(payload.lines, order.lines);
    assert_eq!(payload.ship_to, order.shipping_address);
    assert_eq!(payload.placed_at, order.placed_at);
    let recipient = payload.recipient.unwrap();
    assert_eq!(
        (
            recipient.name.as_str(),
            recipient.email.as_str(),
            recipient.phone.as_str()
        ),
        ("Ada Lovelace", "ada@example.com", "+1 555 0100")
    );
    assert_eq!(incoming.reply_to, "http://127.0.0.1:50053");

    // The customer sees it: SENT_TO_PARTNER is in the history, with the partner.
    let fetched = orders
        .get_order(pb::GetOrderRequest {
            order_id: order.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.status(), pb::OrderStatus::SentToPartner);
    assert_eq!(fetched.partner_id, "contoso");
    assert_eq!(fetched.status_history.last().unwrap().partner_id, "contoso");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_at_the_audit_threshold_also_goes_to_the_audit_topic() {
    let stack = TestStack::builder().start().await;
    stack.enroll_partner("contoso", "US").await;
    let mut orders = stack.orders_client().await;
    // 800 mugs at 12.50 USD = 10,000.00 USD: exactly the default threshold; 799 is just below.
    let at_threshold = orders
        .place_order(sample_order("audit-at", "US").with_line("MUG-001", 800))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(at_threshold.total.as_ref().unwrap().minor_units, 1_000_000);
    let below = orders
        .place_order(sample_order("audit-below", "US").with_line("MUG-001", 799))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(below.total.as_ref().unwrap().minor_units, 998_750);

    let audit = stack
        .broker()
        .read_topic(&stack.topics.audit, 2, Duration::from_secs(5))
        .await;
    let audited_ids: Vec<_> = audit.iter().map(|r| r.key.clone()).collect();
    assert_eq!(
        audited_ids,
        vec![at_threshold.id.clone()],
        "only the order at the threshold is audited"
    );
    assert_eq!(
        audit[0].headers[headers::MESSAGE_TYPE],
        headers::TYPE_AUDIT_ORDER
    );
    // And it still went to its partner.
    let partner = stack
        .broker()
        .read_topic(
            &stack.topics.partner_topic("contoso"),
            2,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(partner.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_nobody_ships_to_is_unroutable_and_listed_for_operators() {
    let stack = TestStack::builder().start().await;
    stack.enroll_partner("contoso", "US").await;
    let mut orders = stack.orders_client().await;
    let order = orders
        .place_order(sample_order("nowhere", "JP"))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();

    let unroutable = dispatch(&stack, &order.id, pb::DispatchState::Unroutable).await;
    assert!(
        unroutable.last_error.contains("JP"),
        "operators are told why: {}",
        unroutable.last_error
    );
    let listed = stack
        .admin_client()
        .await
        .list_dispatches(pb::ListDispatchesRequest {
            filter: Some(pb::DispatchFilter {
                state: pb::DispatchState::Unroutable.into(),
                partner_id: String::new(),
            }),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = listed
        .dispatches
        .iter()
        .map(|d| d.order_id.clone())
        .collect();
    assert_eq!(ids, vec![order.id.clone()]);
    // Never silently dropped: the order is still PLACED for the customer, on no topic.
    let fetched = orders
        .get_order(pb::GetOrderRequest { order_id: order.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.status(), pb::OrderStatus::Placed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_watching_the_order_sees_it_sent_to_the_partner() {
    let stack = TestStack::builder().start().await;
    stack.enroll_partner("contoso", "US").await;
    let mut orders = stack.orders_client().await;
    let order = orders
        .place_order(sample_order("watched", "US"))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let mut watch = orders
        .watch_order(pb::WatchOrderRequest {
            order_id: order.id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut statuses = Vec::new();
    while statuses.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        statuses.push((event.sequence, event.status(), event.partner_id));
    }
    assert_eq!(
        statuses,
        vec![
            (1, pb::OrderStatus::Placed, String::new()),
            (2, pb::OrderStatus::SentToPartner, "contoso".to_owned())
        ]
    );
}
