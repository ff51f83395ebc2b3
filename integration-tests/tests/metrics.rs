//! Every service's and the connector's Prometheus endpoint, scraped over real HTTP after real
//! traffic: an order placed, dispatched through a real Kafka-protocol broker, accepted by a
//! connector built on the SDK and acknowledged through StatusIngest; an unroutable order; a
//! refused report. Each named series must be present with the value that traffic implies.
#![allow(clippy::unwrap_used)]

#[path = "support/connector.rs"]
mod support;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use support::*;
use waybill_connector_sdk::metrics::METRICS_PREFIX;
use waybill_proto::v1::{
    self as pb, DispatchState, OrderStatus, status_ingest_client::StatusIngestClient,
};
use waybill_service_kit::metrics::Metrics;
use waybill_test_kit::metrics_http::get_metrics;

const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_service_and_the_connector_expose_their_series_after_real_traffic() {
    let stack = stack().await;
    let key = enroll(&stack, "acme", "US", 1).await;
    let connector = builder(&stack, "acme", &key).build().await.unwrap();
    let connector_metrics = Metrics::new();
    connector_metrics.register(METRICS_PREFIX, |registry| {
        let inbox = connector.health().register_metrics(registry);
        connector_metrics.on_scrape(move || inbox.refresh());
    });
    let running = start(connector, Recorder::default());

    let orders_at = stack.serve_metrics(&stack.orders_metrics).await;
    let dispatcher_at = stack.serve_metrics(&stack.dispatcher_metrics).await;
    let ingest_at = stack.serve_metrics(&stack.ingest_metrics).await;
    let connector_at = stack.serve_metrics(&connector_metrics).await;

    // Before any traffic: the series exist, at zero.
    let before = scrape(dispatcher_at).await;
    assert_eq!(before.value("waybill_dispatcher_sent_total"), 0.0);
    assert_eq!(
        before.value(r#"waybill_dispatcher_outbox_backlog{state="PENDING"}"#),
        0.0
    );

    // One routable order, all the way to the partner's acknowledgement.
    let routed = place(&stack, "US", "").await;
    wait_for_status(&stack, &routed, OrderStatus::ReceivedByPartner, WITHIN).await;
    eventually(WITHIN, "dispatch row acknowledged", || async {
        dispatch_state(&stack, &routed).await == DispatchState::Acknowledged
    })
    .await;
    // One order no route matches.
    let unroutable = place(&stack, "JP", "").await;
    eventually(WITHIN, "order unroutable", || async {
        dispatch_state(&stack, &unroutable).await == DispatchState::Unroutable
    })
    .await;
    // One report refused (no fields at all).
    let mut ingest = StatusIngestClient::connect(format!("http://{}", stack.ingest_addr()))
        .await
        .unwrap();
    let refused = ingest
        .report_status(pb::ReportStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let orders = scrape(orders_at).await;
    assert_eq!(orders.value("waybill_orders_placed_total"), 2.0);
    assert_eq!(orders.value("waybill_orders_place_replayed_total"), 0.0);
    // Every call, by method and status code (the kit's layer in front of every service).
    assert_eq!(
        orders.value(
            r#"waybill_orders_grpc_server_handled_total{grpc_service="waybill.v1.OrderService",grpc_method="PlaceOrder",grpc_code="OK"}"#
        ),
        2.0
    );
    assert_eq!(
        orders.value(
            r#"waybill_orders_grpc_server_handling_seconds_count{grpc_service="waybill.v1.OrderService",grpc_method="PlaceOrder"}"#
        ),
        2.0
    );
    assert!(orders.text.contains("waybill_orders_build_info{version="));
    // The process's own series, once per registry.
    assert!(orders.value("process_resident_memory_bytes") > 0.0);
    assert!(orders.value("process_open_fds") > 0.0);
    assert!(orders.value("process_start_time_seconds") > 1.7e9);

    let dispatcher = scrape(dispatcher_at).await;
    assert_eq!(dispatcher.value("waybill_dispatcher_sent_total"), 1.0);
    assert_eq!(dispatcher.value("waybill_dispatcher_unroutable_total"), 1.0);
    for zero in [
        "waybill_dispatcher_retries_total",
        "waybill_dispatcher_dead_total",
        "waybill_dispatcher_resent_total",
    ] {
        assert_eq!(dispatcher.value(zero), 0.0, "{zero}");
    }
    // The backlog, read from the database at scrape time.
    assert!(
        !dispatcher
            .text
            .contains(r#"outbox_backlog{state="ACKNOWLEDGED"}"#),
        "done rows are not a backlog"
    );
    assert_eq!(dispatcher.value("waybill_dispatcher_can_send"), 1.0);
    assert_eq!(
        dispatcher.value("waybill_dispatcher_send_failures_total"),
        0.0
    );
    for (state, rows) in [
        ("UNROUTABLE", 1.0),
        ("PENDING", 0.0),
        ("SENT", 0.0),
        ("DEAD", 0.0),
    ] {
        assert_eq!(
            dispatcher.value(&format!(
                r#"waybill_dispatcher_outbox_backlog{{state="{state}"}}"#
            )),
            rows,
            "{state}"
        );
    }
    assert_eq!(
        dispatcher.value("waybill_dispatcher_oldest_due_age_seconds"),
        0.0,
        "nothing is due"
    );
    // The partner's copy was produced once: one latency observation, well under a minute.
    assert_eq!(
        dispatcher.value("waybill_dispatcher_produce_latency_seconds_count"),
        1.0
    );
    let produce_seconds = dispatcher.value("waybill_dispatcher_produce_latency_seconds_sum");
    assert!(
        produce_seconds > 0.0 && produce_seconds < 60.0,
        "{produce_seconds}"
    );

    let ingest = scrape(ingest_at).await;
    assert_eq!(
        ingest.value(
            r#"waybill_status_ingest_grpc_server_handled_total{grpc_service="waybill.v1.StatusIngest",grpc_method="ReportStatus",grpc_code="INVALID_ARGUMENT"}"#
        ),
        1.0,
        "the refused report, by its status code"
    );
    assert_eq!(
        ingest
            .value(r#"waybill_status_ingest_grpc_server_refused_total{reason="unauthenticated"}"#),
        0.0,
        "no credentials on this stack: nothing refused before the service"
    );
    assert_eq!(
        ingest.value("waybill_status_ingest_reports_accepted_total"),
        1.0,
        "the RECEIVED_BY_PARTNER report"
    );
    assert_eq!(
        ingest.value(r#"waybill_status_ingest_reports_rejected_total{reason="invalid_argument"}"#),
        1.0
    );
    assert_eq!(
        ingest.value(r#"waybill_status_ingest_reports_rejected_total{reason="bad_signature"}"#),
        0.0,
        "every known reason is listed from the start"
    );

    // The connector's report is confirmed asynchronously: wait for the inbox to say so.
    let mut connector = scrape(connector_at).await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while connector.value(r#"waybill_connector_inbox_reports{partner="acme",state="confirmed"}"#)
        < 1.0
    {
        assert!(tokio::time::Instant::now() < deadline, "{}", connector.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
        connector = scrape(connector_at).await;
    }
    assert_eq!(
        connector.value(r#"waybill_connector_orders_accepted_total{partner="acme"}"#),
        1.0
    );
    assert_eq!(
        connector.value(r#"waybill_connector_adapter_calls_total{partner="acme"}"#),
        1.0
    );
    assert_eq!(
        connector.value(r#"waybill_connector_inbox_orders{partner="acme",state="accepted"}"#),
        1.0
    );
    assert_eq!(
        connector.value(r#"waybill_connector_inbox_reports{partner="acme",state="pending"}"#),
        0.0
    );
    assert_eq!(
        connector
            .value(r#"waybill_connector_placed_to_acknowledged_seconds_count{partner="acme"}"#),
        1.0
    );
    let placed_to_ack =
        connector.value(r#"waybill_connector_placed_to_acknowledged_seconds_sum{partner="acme"}"#);
    assert!(
        (0.0..60.0).contains(&placed_to_ack),
        "placed → acknowledged {placed_to_ack} s"
    );
    assert_eq!(
        connector.value(r#"waybill_connector_running{partner="acme"}"#),
        1.0
    );
    // The lag is measured every 15 s, for partitions with a safe offset: the order's partition
    // reads 0 once measured (everything is consumed and safe).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(75);
    loop {
        let lag = connector.family("waybill_connector_partition_lag");
        if !lag.is_empty() {
            assert!(
                lag.iter().all(|records| *records == 0.0),
                "{}",
                connector.text
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no lag measured: {}",
            connector.text
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        connector = scrape(connector_at).await;
    }

    running.stop().await;
}

/// One scrape: the exposition text and its samples by series (name and labels as written).
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    /// The value of `series` (e.g. `name{label="value"}`); fails the test when it is absent.
    fn value(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.text))
    }

    /// Every sample of metric `name`, whatever its labels.
    fn family(&self, name: &str) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|(series, _)| {
                series.as_str() == name || series.starts_with(&format!("{name}{{"))
            })
            .map(|(_, value)| *value)
            .collect()
    }
}

/// `GET /metrics` over a plain HTTP/1.1 connection.
async fn scrape(addr: SocketAddr) -> Scrape {
    let (head, body) = get_metrics(addr, None).await;
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    let samples = body
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse::<f64>().unwrap())
        })
        .collect();
    Scrape {
        text: body,
        samples,
    }
}
