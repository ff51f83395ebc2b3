//! A bound on the calls a server holds at once over all its connections. tonic's own limit is
//! per connection (`ServerLimits::concurrency_per_connection`): a caller with many connections
//! (a fleet of storefront instances, or one client retrying on fresh connections) could still
//! have a service hold any number of calls, each with its request and the work behind it in
//! memory (measured: Orders at 125 MiB in a storm of retries at 2,200 placings a second).
//! Past the bound a call is refused at once with `RESOURCE_EXHAUSTED`, as the per-connection
//! limit refuses: callers retry with backoff, memory stays flat.
//!
//! Health checks are exempt: an orchestrator must see a busy server as alive, not restart it
//! for being busy. A call holds its place until its response (for a stream: its headers) is
//! ready; a server stream's messages are not counted.
//!
//! Written here rather than taken from tower (`GlobalConcurrencyLimitLayer` under
//! `LoadShedLayer`): tonic turns tower's refusal into "Too many active requests for the
//! connection", which names the wrong bound, and neither exempts health checks nor marks the
//! refusal for the metrics ([`Refusal::Overloaded`]).

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::{BoxFuture, FutureExt};
use tokio::sync::Semaphore;
use tonic::{Status, codegen::http};
use tower::{Layer, Service};

use crate::rpc_metrics::Refusal;

/// The bound when none is configured (`--max-calls-in-flight`).
pub const DEFAULT_MAX_CALLS_IN_FLIGHT: usize = 1024;

/// Paths never refused for being busy.
const EXEMPT_PREFIX: &str = "/grpc.health.v1.Health/";

/// The layer: one bound shared by every connection of a server.
#[derive(Debug, Clone)]
pub struct InFlightLimitLayer {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl InFlightLimitLayer {
    /// At most `limit` calls at once (at least one).
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

impl<S> Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlightLimit {
            inner,
            permits: self.permits.clone(),
            limit: self.limit,
        }
    }
}

/// See [`InFlightLimitLayer`].
#[derive(Debug, Clone)]
pub struct InFlightLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
    limit: usize,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for InFlightLimit<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if request.uri().path().starts_with(EXEMPT_PREFIX) {
            return self.inner.call(request).boxed();
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let status = Status::resource_exhausted(format!(
                "the server is at its bound of {} calls in flight over all connections; retry \
                 with backoff",
                self.limit
            ));
            let mut response = status.into_http();
            response.extensions_mut().insert(Refusal::Overloaded);
            return futures::future::ready(Ok(response)).boxed();
        };
        let future = self.inner.call(request);
        async move {
            let response = future.await;
            drop(permit);
            response
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tokio::sync::Notify;
    use tower::{ServiceExt, service_fn};

    use super::*;

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder()
            .uri(path)
            .body(())
            .unwrap_or_default()
    }

    fn grpc_status(response: &http::Response<()>) -> Option<String> {
        response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap_or_default().to_owned())
    }

    #[tokio::test]
    async fn past_the_bound_calls_are_refused_at_once_health_is_not_and_a_finished_call_frees_its_place()
     {
        let release = Arc::new(Notify::new());
        let layer = InFlightLimitLayer::new(2);
        let service = layer.layer(service_fn({
            let release = release.clone();
            move |request: http::Request<()>| {
                let release = release.clone();
                async move {
                    if !request.uri().path().starts_with(EXEMPT_PREFIX) {
                        release.notified().await;
                    }
                    Ok::<_, Infallible>(http::Response::new(()))
                }
            }
        }));
        let place = "/waybill.v1.OrderService/PlaceOrder";
        // Two calls held (each on a clone of the service, as each connection has its own).
        let first = tokio::spawn(service.clone().oneshot(request(place)));
        let second = tokio::spawn(service.clone().oneshot(request(place)));
        tokio::task::yield_now().await;
        while layer.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }

        let refused = service
            .clone()
            .oneshot(request(place))
            .await
            .unwrap_or_default();
        let exhausted = (tonic::Code::ResourceExhausted as i32).to_string();
        assert_eq!(grpc_status(&refused).as_deref(), Some(exhausted.as_str()));
        assert_eq!(
            refused.extensions().get::<Refusal>(),
            Some(&Refusal::Overloaded)
        );
        let message = refused
            .headers()
            .get("grpc-message")
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        assert!(message.contains("bound%20of%202%20calls"), "{message}");

        let health = service
            .clone()
            .oneshot(request("/grpc.health.v1.Health/Check"))
            .await
            .unwrap_or_default();
        assert_eq!(grpc_status(&health), None, "health is never refused");

        // One held call finishes: its place is free again.
        release.notify_one();
        let done = tokio::select! {
            done = first => done,
            done = second => done,
        };
        assert!(done.is_ok());
        let next = tokio::spawn(service.clone().oneshot(request(place)));
        while layer.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        release.notify_waiters();
        release.notify_one();
        let next = next.await.ok().and_then(Result::ok).unwrap_or_default();
        assert_eq!(grpc_status(&next), None, "taken once a place was free");
    }
}
