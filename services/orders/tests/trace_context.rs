//! The caller's W3C trace context travels from gRPC metadata into the dispatch row, so the
//! relay continues the same trace. Its own test binary: it installs the process-wide telemetry
//! pipeline, as the `waybill` binary does.
#![allow(clippy::unwrap_used)]

mod support;

use tokio_util::sync::CancellationToken;
use tonic::Request;
use waybill_orders::{OrdersDeps, serve};
use waybill_proto::v1::order_service_client::OrderServiceClient;
use waybill_service_kit::{grpc::ServerLimits, telemetry};
use waybill_test_kit::{TestBackend, fixtures::sample_order};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_trace_context_rides_in_the_dispatch_row() {
    let _telemetry = telemetry::init("orders-test", telemetry::LogFormat::Text).unwrap();
    let f = support::fixture(TestBackend::Postgres).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        OrdersDeps::new(&f.db, "test"),
        ServerLimits::default(),
        shutdown.clone(),
    ));
    let mut client = OrderServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut call = Request::new(sample_order("traced", "US"));
    call.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    call.metadata_mut()
        .insert("tracestate", "shop=checkout".parse().unwrap());
    let order = client
        .place_order(call)
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();

    let (_, traceparent, tracestate, _) =
        support::dispatch_row(&f.db, order.id.parse().unwrap()).await;
    let parts: Vec<_> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], trace_id, "same trace as the caller");
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "a child span of the caller's, not the caller's own"
    );
    assert_eq!(tracestate, "shop=checkout");
    shutdown.cancel();
}
