#![allow(clippy::unwrap_used)]

use std::{collections::VecDeque, convert::Infallible};

use tower::{ServiceExt, service_fn};

use super::*;

/// A response body of given frames.
struct Frames(VecDeque<Frame<&'static [u8]>>);

impl Body for Frames {
    type Data = &'static [u8];
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

fn trailers(code: Code) -> Frame<&'static [u8]> {
    let mut map = http::HeaderMap::new();
    map.insert("grpc-status", (code as i32).to_string().parse().unwrap());
    Frame::trailers(map)
}

/// A server answering every call with `answer()`, measured into a fresh registry.
fn measured(
    answer: fn() -> http::Response<Frames>,
) -> (
    Metrics,
    impl Service<
        http::Request<()>,
        Response = http::Response<Observed<Frames>>,
        Error = Infallible,
        Future: Send,
    > + Clone,
) {
    let metrics = Metrics::new();
    let rpc = RpcMetrics::register(&metrics, "waybill_test", &["waybill.v1.OrderService"]);
    let service =
        RpcMetricsLayer::new(Some(rpc)).layer(service_fn(move |_: http::Request<()>| async move {
            Ok(answer())
        }));
    (metrics, service)
}

fn call(path: &str) -> http::Request<()> {
    http::Request::builder().uri(path).body(()).unwrap()
}

/// Reads the body to its end.
async fn drain(body: &mut Observed<Frames>) {
    while std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
        .await
        .is_some()
    {}
}

async fn line(metrics: &Metrics, start: &str) -> Option<String> {
    let text = metrics.render().await.unwrap();
    text.lines()
        .find(|line| line.starts_with(start))
        .map(str::to_owned)
}

#[tokio::test]
async fn a_call_is_counted_with_the_status_in_its_trailers() {
    let (metrics, service) = measured(|| {
        http::Response::new(Frames(VecDeque::from([
            Frame::data(&b"message"[..]),
            trailers(Code::Ok),
        ])))
    });
    let mut response = service
        .oneshot(call("/waybill.v1.OrderService/PlaceOrder"))
        .await
        .unwrap();
    // Not counted before its status is known.
    assert_eq!(
        line(&metrics, "waybill_test_grpc_server_handled_total{").await,
        None
    );
    drain(response.body_mut()).await;
    assert_eq!(
        line(&metrics, "waybill_test_grpc_server_handled_total{")
            .await
            .unwrap(),
        r#"waybill_test_grpc_server_handled_total{grpc_service="waybill.v1.OrderService",grpc_method="PlaceOrder",grpc_code="OK"} 1"#
    );
    let count = line(&metrics, "waybill_test_grpc_server_handling_seconds_count{")
        .await
        .unwrap();
    assert!(count.ends_with(" 1"), "{count}");
    assert_eq!(
        line(&metrics, "# UNIT waybill_test_grpc_server_handling_seconds")
            .await
            .unwrap(),
        "# UNIT waybill_test_grpc_server_handling_seconds seconds",
        "a histogram in seconds says so"
    );
    let build = line(&metrics, "waybill_test_build_info{").await.unwrap();
    assert!(build.ends_with(" 1"), "{build}");
}

#[tokio::test]
async fn an_error_before_any_message_is_counted_from_its_headers() {
    let (metrics, service) = measured(|| {
        tonic::Status::invalid_argument("no")
            .into_http()
            .map(|_: tonic::body::Body| Frames(VecDeque::new()))
    });
    let response = service
        .oneshot(call("/waybill.v1.OrderService/GetOrder"))
        .await
        .unwrap();
    drop(response);
    let text = metrics.render().await.unwrap();
    assert!(
        text.contains(r#"grpc_method="GetOrder",grpc_code="INVALID_ARGUMENT"} 1"#),
        "{text}"
    );
    assert!(!text.contains("CANCELLED"), "{text}");
}

#[tokio::test]
async fn a_caller_gone_before_the_status_is_a_cancelled_call() {
    let (metrics, service) =
        measured(|| http::Response::new(Frames(VecDeque::from([trailers(Code::Ok)]))));
    let response = service
        .oneshot(call("/waybill.v1.OrderService/WatchOrder"))
        .await
        .unwrap();
    drop(response);
    let text = metrics.render().await.unwrap();
    assert!(
        text.contains(r#"grpc_method="WatchOrder",grpc_code="CANCELLED"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn made_up_paths_share_one_series_and_refusals_are_counted_by_reason() {
    let (metrics, service) = measured(|| {
        let mut response = tonic::Status::unauthenticated("who?")
            .into_http()
            .map(|_: tonic::body::Body| Frames(VecDeque::new()));
        response.extensions_mut().insert(Refusal::Unauthenticated);
        response
    });
    for path in [
        "/evil.Service/A",
        "/evil.Service/B",
        "/waybill.v1.OrderService/a/b",
    ] {
        service.clone().oneshot(call(path)).await.unwrap();
    }
    let text = metrics.render().await.unwrap();
    assert!(
        text.contains(
            r#"{grpc_service="other",grpc_method="other",grpc_code="UNAUTHENTICATED"} 3"#
        ),
        "{text}"
    );
    assert!(!text.contains("evil"), "{text}");
    assert!(
        text.contains(r#"waybill_test_grpc_server_refused_total{reason="unauthenticated"} 3"#),
        "{text}"
    );
    // Every reason is exported from the start.
    for reason in ["rate_limited", "overloaded"] {
        assert!(
            text.contains(&format!(
                r#"waybill_test_grpc_server_refused_total{{reason="{reason}"}} 0"#
            )),
            "{text}"
        );
    }
}

#[test]
fn code_names_are_the_specifications() {
    assert_eq!(code_name(Code::Ok), "OK");
    assert_eq!(code_name(Code::InvalidArgument), "INVALID_ARGUMENT");
    assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
}
