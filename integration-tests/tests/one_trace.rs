//! One trace per order, as an OTLP backend receives it: an in-process OTLP receiver (the
//! collector's `TraceService` over gRPC on loopback) gets the spans the services and a
//! connector built on the SDK export through the kit's telemetry set-up, and the spans of one
//! order must form one trace: place → dispatch → connector (→ the adapter's own span) → report.
//!
//! The tracing subscriber is process-wide, so this file (its own test process) holds this one
//! test only.
#![allow(clippy::unwrap_used)]

#[path = "support/connector.rs"]
mod support;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::{Span, span::SpanKind},
};
use support::*;
use waybill_connector_sdk::{
    Acceptance, PartnerError, ShipmentContext, TransportPartner, proto::DispatchedOrder,
};
use waybill_integration_tests::TestStack;
use waybill_proto::v1::OrderStatus;
use waybill_service_kit::telemetry::{self, Export, LogFormat};

const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_spans_of_one_order_form_one_trace_from_place_to_report() {
    let receiver = Receiver::start().await;
    // As the `waybill` binary sets it up, exporting to the receiver (inside the runtime: the
    // exporter's channel runs on it).
    let guard = telemetry::init_with(
        "waybill-one-trace-test",
        LogFormat::Text,
        Some(Export::Endpoint(format!("http://{}", receiver.addr))),
    )
    .unwrap();

    let stack = TestStack::builder()
        .status_ingest(true)
        .poll_interval(Duration::from_millis(500))
        .start()
        .await;
    let key = enroll(&stack, "acme", "US", 1).await;
    let connector = builder(&stack, "acme", &key).build().await.unwrap();
    let adapter = TracedAdapter::default();
    let running = start(connector, adapter.clone());

    let order_id = place(&stack, "US", "").await;
    wait_for_status(&stack, &order_id, OrderStatus::ReceivedByPartner, WITHIN).await;

    // Flush until the report's server span has arrived (the report is sent after the answer).
    let deadline = tokio::time::Instant::now() + WITHIN;
    let guard = Arc::new(guard);
    let report = loop {
        let flushing = Arc::clone(&guard);
        tokio::task::spawn_blocking(move || flushing.flush())
            .await
            .unwrap();
        if let Some(span) = receiver
            .spans()
            .into_iter()
            .find(|s| s.name == "report" && attr(s, "rpc.method") == REPORT_STATUSES)
        {
            break span;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no span of the report exported: {:?}",
            names(&receiver.spans())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let spans = receiver.spans();
    let place = one(&spans, "PlaceOrder server span", |s| {
        s.name == "grpc" && attr(s, "rpc.method") == "/waybill.v1.OrderService/PlaceOrder"
    });
    let trace_id = place.trace_id.clone();
    let in_trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let dispatch = one(&spans, "relay span", |s| {
        s.name == "dispatch_order" && attr(s, "order_id") == order_id
    });
    let consumer = one(&spans, "connector span", |s| {
        s.name == "waybill.connector.order" && attr(s, "order_id") == order_id
    });
    let adapter_span = one(&spans, "adapter span", |s| {
        s.name == "partner.request_shipment"
    });

    // One trace: every span of the order carries the PlaceOrder call's trace id.
    for (what, span) in [
        ("dispatch", dispatch),
        ("consumer", consumer),
        ("adapter", adapter_span),
        ("report", &report),
    ] {
        assert_eq!(
            hex(&span.trace_id),
            hex(&trace_id),
            "{what} span is in another trace; the order's trace holds {:?}",
            names_of(&in_trace)
        );
    }
    // The right parents: place → dispatch → consumer → {adapter, report}.
    assert_eq!(
        hex(&dispatch.parent_span_id),
        hex(&place.span_id),
        "dispatch ← place"
    );
    assert_eq!(
        hex(&consumer.parent_span_id),
        hex(&dispatch.span_id),
        "consumer ← dispatch"
    );
    assert_eq!(
        hex(&adapter_span.parent_span_id),
        hex(&consumer.span_id),
        "adapter ← consumer"
    );
    assert_eq!(
        hex(&report.parent_span_id),
        hex(&consumer.span_id),
        "report ← consumer"
    );
    // Kinds as an OTLP backend draws them.
    assert_eq!(place.kind, SpanKind::Server as i32);
    assert_eq!(dispatch.kind, SpanKind::Producer as i32);
    assert_eq!(consumer.kind, SpanKind::Consumer as i32);
    assert_eq!(report.kind, SpanKind::Server as i32);
    // The adapter saw the connector span's context (what it would pass on to the partner).
    assert_eq!(
        adapter.seen.lock().unwrap().clone(),
        vec![format!(
            "00-{}-{}-01",
            hex(&trace_id),
            hex(&consumer.span_id)
        )]
    );

    running.stop().await;
    drop(stack);
    if let Ok(guard) = Arc::try_unwrap(guard) {
        tokio::task::spawn_blocking(move || guard.shutdown(Duration::from_secs(5)))
            .await
            .unwrap();
    }
}

/// The SDK sends its reports in `ReportStatuses` calls; StatusIngest gives each report a span
/// of its own (`report`), in its order's trace, which the call's own span is not.
const REPORT_STATUSES: &str = "/waybill.v1.StatusIngest/ReportStatuses";

/// Accepts every order inside a span of its own, and records the `traceparent` it was given.
#[derive(Clone, Default)]
struct TracedAdapter {
    seen: Arc<Mutex<Vec<String>>>,
}

impl TransportPartner for TracedAdapter {
    async fn request_shipment(
        &self,
        _order: &DispatchedOrder,
        ctx: &ShipmentContext,
    ) -> Result<Acceptance, PartnerError> {
        let _span = tracing::info_span!("partner.request_shipment").entered();
        self.seen
            .lock()
            .unwrap()
            .push(ctx.traceparent().unwrap_or_default().to_owned());
        Ok(Acceptance::accepted(tracking_id(ctx.idempotency_key())))
    }
}

/// The collector side of OTLP/gRPC: keeps every span it is sent.
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Self {
            addr: listener.local_addr().unwrap(),
            spans: Arc::default(),
        };
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        receiver
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A string attribute of `span` ("" when absent).
fn attr<'s>(span: &'s Span, key: &str) -> &'s str {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value| match &value.value {
            Some(Value::StringValue(text)) => Some(text.as_str()),
            _ => None,
        })
        .unwrap_or("")
}

/// The one span matching `matches`.
fn one<'s>(spans: &'s [Span], what: &str, matches: impl Fn(&Span) -> bool) -> &'s Span {
    let found: Vec<&Span> = spans.iter().filter(|s| matches(s)).collect();
    assert_eq!(found.len(), 1, "{what}: {:?}", names(spans));
    found[0]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn names(spans: &[Span]) -> Vec<String> {
    spans
        .iter()
        .map(|s| format!("{} {}", s.name, attr(s, "rpc.method")))
        .collect()
}

fn names_of(spans: &[&Span]) -> Vec<String> {
    spans
        .iter()
        .map(|s| format!("{} {}", s.name, attr(s, "rpc.method")))
        .collect()
}
