//! The connector SDK against the real system: Orders, the dispatcher and StatusIngest on
//! loopback over Postgres, a real Kafka-protocol broker, a connector built on the SDK.
//! Each test asserts what a partner and an operator would check: the order's status history,
//! the dispatch row, the adapter's calls, the inbox, the dead-letter topic.
#![allow(clippy::unwrap_used)]

#[path = "support/connector.rs"]
mod support;

use std::{collections::HashMap, time::Duration};

use support::*;
use waybill_connector_sdk::{
    ClusterConfig, DEAD_LETTER_REASON, StatusUpdate,
    inbox::{OrderState, ReportState},
};
use waybill_proto::{
    headers,
    v1::{DispatchState, OrderStatus},
};
use waybill_test_kit::fixtures::{PartnerFixture as _, sample_partner};

const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dispatched_order_reaches_the_adapter_once_and_its_answers_land_on_the_order() {
    let stack = stack().await;
    let key = enroll(&stack, "acme", "US", 1).await;
    let connector = builder(&stack, "acme", &key).build().await.unwrap();
    let reporter = connector.reporter();
    let recorder = Recorder::default();
    let running = start(connector, recorder.clone());

    // Placed within a trace: the trace continues through the record into the reports.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut call = tonic::Request::new(order_request("trace-1", "US", ""));
    call.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let order_id = stack
        .orders_client()
        .await
        .place_order(call)
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap()
        .id;
    let order = wait_for_status(&stack, &order_id, OrderStatus::ReceivedByPartner, WITHIN).await;
    assert_eq!(order.tracking_id, tracking_id(&order_id));
    assert_eq!(order.partner_id, "acme");
    let sent = running.inbox.reports_of("acme", &order_id).await.unwrap();
    let traceparent = sent[0]
        .traceparent
        .as_deref()
        .expect("report carries the trace");
    assert_eq!(
        waybill_connector_sdk::trace::trace_id(Some(traceparent)),
        Some(trace_id),
        "one trace per order: {traceparent}"
    );
    assert_eq!(events(&order, OrderStatus::ReceivedByPartner), 1);
    eventually(WITHIN, "dispatch row acknowledged", || async {
        dispatch_state(&stack, &order_id).await == DispatchState::Acknowledged
    })
    .await;

    // A later status from anywhere in the partner's program.
    reporter
        .report(
            &order_id,
            StatusUpdate::shipped()
                .with_detail("left the depot")
                .with_detail_code("OUT_FOR_DELIVERY"),
        )
        .await
        .unwrap();
    let order = wait_for_status(&stack, &order_id, OrderStatus::Shipped, WITHIN).await;
    let shipped = order
        .status_history
        .iter()
        .find(|e| e.status() == OrderStatus::Shipped)
        .unwrap();
    assert_eq!(shipped.detail_code, "OUT_FOR_DELIVERY");
    assert_eq!(shipped.tracking_id, tracking_id(&order_id));
    // Reporting on an order this connector never received is refused before anything is sent.
    assert!(
        reporter
            .report("not-an-order", StatusUpdate::delivered())
            .await
            .is_err()
    );

    assert_eq!(
        recorder.calls_for(&order_id),
        1,
        "the adapter was called once"
    );
    let metrics = running.health.metrics();
    assert_eq!(metrics.orders_accepted, 1);
    assert_eq!(metrics.set_aside, 0);
    // StatusIngest answers after its commit, so the history can show SHIPPED a moment before
    // the connector has marked the report confirmed in its inbox.
    eventually(WITHIN, "both reports confirmed in the inbox", || async {
        let counts = running.health.inbox_counts().await.unwrap();
        counts.reports_confirmed == 2 && counts.reports_pending == 0
    })
    .await;
    let counts = running.health.inbox_counts().await.unwrap();
    assert_eq!(counts.accepted, 1);
    assert_eq!(counts.reports_confirmed, 2);
    assert_eq!(counts.reports_pending, 0);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_delivered_three_times_calls_the_adapter_once_and_records_one_event() {
    let stack = stack().await;
    let key = enroll(&stack, "acme", "US", 1).await;
    let inbox = inbox_path();
    let recorder = Recorder::default();
    let first = start(
        builder(&stack, "acme", &key)
            .inbox_path(&inbox)
            .build()
            .await
            .unwrap(),
        recorder.clone(),
    );
    let order_id = place(&stack, "US", "").await;
    wait_for_status(&stack, &order_id, OrderStatus::ReceivedByPartner, WITHIN).await;

    // Delivery 2: a producer duplicate — the same record again on the same partition.
    let topic = stack.topics.partner_topic("acme");
    let records = stack.broker().read_topic(&topic, 1, WITHIN).await;
    let record = records.iter().find(|r| r.key == order_id).unwrap();
    let producer = producer(&stack);
    produce(
        &producer,
        &topic,
        record.partition,
        &record.key,
        &record.payload,
        &record.headers,
    )
    .await;
    eventually(WITHIN, "duplicate answered from the inbox", || async {
        first.health.metrics().duplicates_skipped >= 1
    })
    .await;
    first.stop().await;

    // Deliveries 3 and 4: the connector restarts with nothing committed (a new group reads
    // the topic from the start) — both copies arrive again.
    let second = start(
        builder_on(
            cluster(&stack, "again").group_id("acme-replay"),
            "acme",
            &key,
        )
        .inbox_path(&inbox)
        .build()
        .await
        .unwrap(),
        recorder.clone(),
    );
    eventually(WITHIN, "both copies redelivered", || async {
        second.health.metrics().duplicates_skipped >= 2
    })
    .await;

    assert_eq!(recorder.calls_for(&order_id), 1, "the adapter saw it once");
    let order = get_order(&stack, &order_id).await;
    assert_eq!(events(&order, OrderStatus::ReceivedByPartner), 1);
    let row = second
        .inbox
        .order("acme", &order_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, OrderState::Accepted);
    assert!(
        row.deliveries >= 4,
        "every delivery counted: {}",
        row.deliveries
    );
    assert_eq!(row.adapter_calls, 1);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_made_while_status_ingest_is_down_all_land_once_it_is_back() {
    let stack = stack().await;
    let key = enroll(&stack, "acme", "US", 1).await;
    stack.stop_status_ingest().await;
    let recorder = Recorder::default();
    let running = start(
        builder(&stack, "acme", &key).build().await.unwrap(),
        recorder.clone(),
    );

    let mut order_ids = Vec::new();
    for _ in 0..4 {
        order_ids.push(place(&stack, "US", "").await);
    }
    eventually(WITHIN, "all four answered and retrying", || async {
        let counts = running.health.inbox_counts().await.unwrap();
        counts.accepted == 4
            && counts.reports_pending == 4
            && running.health.metrics().report_retries >= 4
    })
    .await;
    for order_id in &order_ids {
        let order = get_order(&stack, order_id).await;
        assert_eq!(events(&order, OrderStatus::ReceivedByPartner), 0);
    }

    stack.start_status_ingest().await;
    for order_id in &order_ids {
        let order = wait_for_status(&stack, order_id, OrderStatus::ReceivedByPartner, WITHIN).await;
        assert_eq!(order.tracking_id, tracking_id(order_id));
    }
    eventually(WITHIN, "every report confirmed", || async {
        running
            .health
            .inbox_counts()
            .await
            .unwrap()
            .reports_confirmed
            == 4
    })
    .await;
    for order_id in &order_ids {
        let order = get_order(&stack, order_id).await;
        assert_eq!(
            events(&order, OrderStatus::ReceivedByPartner),
            1,
            "none doubled"
        );
        assert_eq!(recorder.calls_for(order_id), 1);
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_records_are_set_aside_and_slow_orders_retry_without_stalling_the_partition() {
    let stack = stack().await;
    let key = enroll(&stack, "acme", "US", 1).await;
    let topic = stack.topics.partner_topic("acme");
    let dead_letter = format!("{topic}.dead-letter");
    stack.broker().create_topic(&dead_letter, 1).await;
    // A record that claims to be an order but is not, first on every partition: whichever
    // partition the next order lands on, it comes after poison.
    let producer = producer(&stack);
    let poison_headers: HashMap<String, String> = [
        (headers::MESSAGE_TYPE, headers::TYPE_DISPATCHED_ORDER),
        (headers::SCHEMA_VERSION_HEADER, headers::SCHEMA_VERSION),
        (headers::CORRELATION_ID, "poison"),
        (headers::REPLY_TO, "http://127.0.0.1:1"),
        (headers::REGION, "test"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for partition in 0..3 {
        produce(
            &producer,
            &topic,
            partition,
            "poison",
            b"\xff\xff\xff not protobuf",
            &poison_headers,
        )
        .await;
    }

    let recorder = Recorder::default();
    let running = start(
        builder(&stack, "acme", &key).build().await.unwrap(),
        recorder.clone(),
    );
    let next = place(&stack, "US", "").await;
    // Fails retryably twice, then succeeds; the other order is not held up meanwhile.
    let flaky = place(&stack, "US", "[fail-2]").await;
    wait_for_status(&stack, &next, OrderStatus::ReceivedByPartner, WITHIN).await;
    wait_for_status(&stack, &flaky, OrderStatus::ReceivedByPartner, WITHIN).await;
    assert_eq!(recorder.calls_for(&next), 1);
    assert_eq!(
        recorder.calls_for(&flaky),
        3,
        "two retryable failures, then accepted"
    );

    eventually(WITHIN, "poison set aside", || async {
        running.health.metrics().set_aside >= 3
    })
    .await;
    let rows = running.inbox.set_aside_rows("acme", 10).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|r| r.reason.contains("DispatchedOrder") && r.order_id.is_empty())
    );
    let dead = stack.broker().read_topic(&dead_letter, 3, WITHIN).await;
    assert_eq!(dead.len(), 3, "each poison record on the dead-letter topic");
    assert!(
        dead.iter()
            .all(|r| r.headers[DEAD_LETTER_REASON].contains("payload"))
    );
    let metrics = running.health.metrics();
    assert!(metrics.adapter_retries >= 2);
    assert_eq!(metrics.dead_letter_failures, 0);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partners_token_is_refused_for_another_partners_orders() {
    let stack = stack().await;
    let alpha_key = enroll(&stack, "alpha", "US", 1).await;
    let beta_key = enroll(&stack, "beta", "CA", 2).await;
    // Beta reads alpha's topic (a misconfigured ACL, say), accepts alpha's order and reports
    // it with beta's own, valid key.
    let beta = start(
        builder_on(
            ClusterConfig::new("snoop", stack.broker().bootstrap_servers())
                .topic(stack.topics.partner_topic("alpha"))
                .session_timeout(Duration::from_secs(6)),
            "beta",
            &beta_key,
        )
        .build()
        .await
        .unwrap(),
        Recorder::default(),
    );
    let order_id = place(&stack, "US", "").await;
    eventually(WITHIN, "beta's report refused", || async {
        beta.inbox
            .reports_of("beta", &order_id)
            .await
            .unwrap()
            .first()
            .is_some_and(|r| r.state == ReportState::Refused)
    })
    .await;
    let report = beta
        .inbox
        .reports_of("beta", &order_id)
        .await
        .unwrap()
        .remove(0);
    assert!(
        report.last_error.starts_with("PermissionDenied"),
        "{}",
        report.last_error
    );
    assert_eq!(beta.health.metrics().reports_refused, 1);
    let order = get_order(&stack, &order_id).await;
    assert_eq!(events(&order, OrderStatus::ReceivedByPartner), 0);
    assert_eq!(order.tracking_id, "");
    assert_eq!(dispatch_state(&stack, &order_id).await, DispatchState::Sent);
    beta.stop().await;

    // Alpha, whose order it is, is believed.
    let alpha = start(
        builder(&stack, "alpha", &alpha_key).build().await.unwrap(),
        Recorder::default(),
    );
    let order = wait_for_status(&stack, &order_id, OrderStatus::ReceivedByPartner, WITHIN).await;
    assert_eq!(order.partner_id, "alpha");
    alpha.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unconfirmed_report_is_sent_after_a_restart_to_a_status_ingest_over_tls() {
    logs();
    let stack = waybill_integration_tests::TestStack::builder()
        .status_ingest_tls(true)
        .poll_interval(Duration::from_millis(500))
        .start()
        .await;
    let key = enroll(&stack, "acme", "US", 1).await;
    let inbox = inbox_path();
    // Without the CA the https reply-to cannot be trusted: the report waits, with the reason.
    let recorder = Recorder::default();
    let untrusting = start(
        builder(&stack, "acme", &key)
            .inbox_path(&inbox)
            .build()
            .await
            .unwrap(),
        recorder.clone(),
    );
    let order_id = place(&stack, "US", "").await;
    eventually(WITHIN, "report pending for lack of a CA", || async {
        untrusting
            .inbox
            .reports_of("acme", &order_id)
            .await
            .unwrap()
            .first()
            .is_some_and(|r| {
                r.state == ReportState::Pending && r.attempts >= 1 && r.last_error.contains("no CA")
            })
    })
    .await;
    untrusting.stop().await;
    assert_eq!(
        events(
            &get_order(&stack, &order_id).await,
            OrderStatus::ReceivedByPartner
        ),
        0
    );

    // Restarted with the CA: the stored report is sent (the order is not redelivered, its
    // offset was committed, and the adapter is not called again).
    let ca = stack.ingest_pki.as_ref().unwrap().ca_cert.clone();
    let trusting = start(
        builder(&stack, "acme", &key)
            .inbox_path(&inbox)
            .report_tls_ca(ca)
            .build()
            .await
            .unwrap(),
        recorder.clone(),
    );
    let order = wait_for_status(&stack, &order_id, OrderStatus::ReceivedByPartner, WITHIN).await;
    assert_eq!(order.tracking_id, tracking_id(&order_id));
    assert_eq!(recorder.calls_for(&order_id), 1);
    trusting.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resend_after_the_handover_deadline_is_answered_from_the_inbox() {
    let stack = stack().await;
    let key = enroll(&stack, "acme", "US", 1).await;
    // A one-second handover deadline, and StatusIngest down: the receipt cannot arrive in
    // time, so the dispatcher sends the order again.
    stack
        .enroll(sample_partner("acme").with_handover_deadline(Duration::from_secs(1)))
        .await;
    stack.stop_status_ingest().await;
    let recorder = Recorder::default();
    let running = start(
        builder(&stack, "acme", &key).build().await.unwrap(),
        recorder.clone(),
    );
    let order_id = place(&stack, "US", "").await;
    eventually(WITHIN, "the resend answered from the inbox", || async {
        running
            .inbox
            .order("acme", &order_id)
            .await
            .unwrap()
            .is_some_and(|row| row.deliveries >= 2)
            && running.health.metrics().duplicates_skipped >= 1
    })
    .await;
    stack.start_status_ingest().await;
    let order = wait_for_status(&stack, &order_id, OrderStatus::ReceivedByPartner, WITHIN).await;
    assert_eq!(events(&order, OrderStatus::ReceivedByPartner), 1);
    assert_eq!(
        recorder.calls_for(&order_id),
        1,
        "the resend never reached the adapter"
    );
    eventually(WITHIN, "dispatch row acknowledged", || async {
        dispatch_state(&stack, &order_id).await == DispatchState::Acknowledged
    })
    .await;
    running.stop().await;
}
