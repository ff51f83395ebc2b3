//! Per-RPC series for every service, from one tower layer in front of the caller checks
//! ([`crate::grpc::serve`] puts it outermost): each call counted by service, method and gRPC
//! status code, its handling time in a histogram, the calls the credential check or the rate
//! limit refused counted by reason, and the build's version as an info series.
//!
//! Registered under the service's prefix (`waybill_orders`, …):
//!
//! | series | labels |
//! | --- | --- |
//! | `<prefix>_grpc_server_handled_total` | `grpc_service`, `grpc_method`, `grpc_code` (`OK`, `INVALID_ARGUMENT`, …) |
//! | `<prefix>_grpc_server_handling_seconds` (histogram; a stream's whole life) | `grpc_service`, `grpc_method` |
//! | `<prefix>_grpc_server_refused_total` | `reason`: `unauthenticated`, `permission_denied`, `rate_limited` |
//! | `<prefix>_build_info` (always 1) | `version` |
//!
//! A method of a service this server does not serve is counted as `grpc_service="other"`,
//! `grpc_method="other"`, so a caller cannot grow the series by calling made-up paths.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Body, Frame, SizeHint};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::Unit,
};
use tonic::{Code, codegen::http};
use tower::{Layer, Service};

use crate::metrics::Metrics;

/// Why the server refused a call before it reached the service: put on the refusal's response
/// (an extension) by the credential check, the rate limit and the bound on calls in flight,
/// counted here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credential, or one nobody owns.
    Unauthenticated,
    /// A caller whose role may not call the method.
    PermissionDenied,
    /// Over the caller's rate for the method.
    RateLimited,
    /// The server held as many calls as it may over all its connections.
    Overloaded,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Handled {
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Method {
    grpc_service: String,
    grpc_method: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Version {
    version: &'static str,
}

/// One server's per-RPC series. Cheap to clone.
#[derive(Clone)]
pub struct RpcMetrics {
    handled: Family<Handled, Counter>,
    seconds: Family<Method, Histogram>,
    refused: Family<Reason, Counter>,
    services: Arc<[&'static str]>,
}

impl std::fmt::Debug for RpcMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcMetrics")
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

impl RpcMetrics {
    /// Registers the series in `metrics` under `prefix` (e.g. `waybill_orders`), for a server
    /// of `services` (fully qualified names, e.g. `waybill.v1.OrderService`; gRPC health and
    /// reflection are counted too).
    pub fn register(metrics: &Metrics, prefix: &str, services: &[&'static str]) -> Self {
        let this = Self {
            handled: Family::default(),
            seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
            }),
            refused: Family::default(),
            services: services
                .iter()
                .copied()
                .chain(["grpc.health.v1.Health"])
                .collect(),
        };
        let build = Info::new(Version {
            version: env!("CARGO_PKG_VERSION"),
        });
        for reason in [
            Refusal::Unauthenticated,
            Refusal::PermissionDenied,
            Refusal::RateLimited,
            Refusal::Overloaded,
        ] {
            this.refused
                .get_or_create(&Reason {
                    reason: reason.as_str(),
                })
                .inc_by(0);
        }
        metrics.register(prefix, |registry| {
            registry.register(
                "grpc_server_handled",
                "RPCs completed, by service, method and gRPC status code",
                this.handled.clone(),
            );
            registry.register_with_unit(
                "grpc_server_handling",
                "Time from a call's arrival to its last message (a stream's whole life), by method",
                Unit::Seconds,
                this.seconds.clone(),
            );
            registry.register(
                "grpc_server_refused",
                "Calls refused before the service, by reason: credential check or rate limit",
                this.refused.clone(),
            );
            registry.register("build", "The running build", build);
        });
        this
    }

    /// The labels of `path` (`/package.Service/Method`): a served service's, or `other`.
    fn method(&self, path: &str) -> Method {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let known = self.services.contains(&service)
            || service.starts_with("grpc.reflection.")
            || service.starts_with("grpc.health.");
        if known && !method.is_empty() && !method.contains('/') && method.len() <= 64 {
            Method {
                grpc_service: service.to_owned(),
                grpc_method: method.to_owned(),
            }
        } else {
            Method {
                grpc_service: "other".to_owned(),
                grpc_method: "other".to_owned(),
            }
        }
    }

    fn record(&self, method: &Method, code: Code, started: Instant) {
        self.handled
            .get_or_create(&Handled {
                grpc_service: method.grpc_service.clone(),
                grpc_method: method.grpc_method.clone(),
                grpc_code: code_name(code),
            })
            .inc();
        self.seconds
            .get_or_create(method)
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The canonical name of a gRPC status code, as the gRPC specification spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The layer ([`RpcMetrics`] off when `None`).
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    metrics: Option<RpcMetrics>,
}

impl RpcMetricsLayer {
    /// Counts into `metrics`, or passes calls through untouched.
    pub fn new(metrics: Option<RpcMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Measured {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: Option<RpcMetrics>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Measured<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body + Unpin,
{
    type Response = http::Response<Observed<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let watch = self.metrics.clone().map(|metrics| Watch {
            method: metrics.method(request.uri().path()),
            metrics,
            started: Instant::now(),
        });
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            let Some(watch) = watch else {
                return Ok(response.map(|body| Observed { body, watch: None }));
            };
            if let Some(refusal) = response.extensions().get::<Refusal>() {
                watch
                    .metrics
                    .refused
                    .get_or_create(&Reason {
                        reason: refusal.as_str(),
                    })
                    .inc();
            }
            // A trailers-only response (an error before any message) has its status here.
            let early = tonic::Status::from_header_map(response.headers()).map(|s| s.code());
            let watch = match early {
                Some(code) => {
                    watch.finish(code);
                    None
                }
                None => Some(watch),
            };
            Ok(response.map(|body| Observed { body, watch }))
        })
    }
}

/// A call being measured until its status is known.
struct Watch {
    metrics: RpcMetrics,
    method: Method,
    started: Instant,
}

impl Watch {
    fn finish(self, code: Code) {
        self.metrics.record(&self.method, code, self.started);
    }
}

/// A response body that records the call's status from its trailers (or `CANCELLED` when the
/// caller went away first).
pub struct Observed<B> {
    body: B,
    watch: Option<Watch>,
}

impl<B: Body + Unpin> Body for Observed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(watch) = self.watch.take()
                {
                    let code = tonic::Status::from_header_map(trailers)
                        .map_or(Code::Unknown, |status| status.code());
                    watch.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(watch) = self.watch.take() {
                    watch.finish(Code::Unknown);
                }
            }
            Poll::Ready(None) => {
                // Ended without trailers: no status was sent.
                if let Some(watch) = self.watch.take() {
                    watch.finish(Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        // Dropped before its status: the caller cancelled (or the connection went away).
        if let Some(watch) = self.watch.take() {
            watch.finish(Code::Cancelled);
        }
    }
}

#[cfg(test)]
#[path = "rpc_metrics_tests.rs"]
mod tests;
