//! A per-caller rate limit on the RPCs that create work (`PlaceOrder`, `ReportStatus`), as a
//! tower layer over governor's keyed GCRA limiter: a caller over its rate gets
//! `RESOURCE_EXHAUSTED` at once, without the call reaching the handler or the database.
//!
//! The key is the authenticated caller's name; a call without one (development, or partners on
//! StatusIngest, who authenticate inside the call) is keyed by its peer IP address.

use std::{
    num::NonZeroU32,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::{Either, Ready, ready};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::{Status, codegen::http};
use tower::{Layer, Service};

use super::{caller::Caller, incoming::PeerInfo};
use crate::rpc_metrics::Refusal;

/// The RPCs that are rate-limited.
pub const LIMITED_RPCS: &[&str] = &[
    "/waybill.v1.OrderService/PlaceOrder",
    "/waybill.v1.StatusIngest/ReportStatus",
];

/// A rate per caller: `per_second` sustained, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained calls per second.
    pub per_second: NonZeroU32,
    /// Calls allowed at once after a quiet period.
    pub burst: NonZeroU32,
}

/// The layer (one limiter shared by every connection of a server).
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer").finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// Limits every caller to `limit` on [`LIMITED_RPCS`].
    pub fn new(limit: RateLimit) -> Self {
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        Self {
            limiter: Arc::new(RateLimiter::keyed(quota)),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limited {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
}

/// One bucket per RPC and caller (or peer address, for calls without a caller).
fn caller_key<B>(request: &http::Request<B>) -> String {
    let rpc = request.uri().path();
    if let Some(caller) = request.extensions().get::<Caller>() {
        return format!("{rpc} caller:{}", caller.name);
    }
    match request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|peer| peer.remote_addr)
    {
        Some(addr) => format!("{rpc} peer:{}", addr.ip()),
        None => format!("{rpc} peer:unknown"),
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Limited<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if LIMITED_RPCS.contains(&request.uri().path())
            && self.limiter.check_key(&caller_key(&request)).is_err()
        {
            // Forget idle callers now and then, so the key table stays small.
            self.limiter.retain_recent();
            let status = Status::resource_exhausted(
                "rate limit for this call exceeded for this caller; retry with backoff",
            );
            let mut response = status.into_http();
            response.extensions_mut().insert(Refusal::RateLimited);
            return Either::Left(ready(Ok(response)));
        }
        Either::Right(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{ServiceExt, service_fn};

    use super::*;

    fn request(path: &str, caller: Option<&str>, ip: [u8; 4]) -> http::Request<()> {
        let mut request = http::Request::builder()
            .uri(path)
            .body(())
            .expect("request");
        if let Some(name) = caller {
            request.extensions_mut().insert(Caller {
                name: name.into(),
                role: super::super::Role::Storefront,
            });
        }
        request.extensions_mut().insert(PeerInfo {
            remote_addr: Some((ip, 4000).into()),
            client_cert: None,
        });
        request
    }

    async fn code(layer: &RateLimitLayer, request: http::Request<()>) -> Option<String> {
        let service = layer.layer(service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(()))
        }));
        let response = service.oneshot(request).await.expect("infallible");
        response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap_or_default().to_owned())
    }

    #[tokio::test]
    async fn each_caller_gets_its_own_burst_on_the_limited_rpcs_only() {
        let layer = RateLimitLayer::new(RateLimit {
            per_second: NonZeroU32::MIN,
            burst: NonZeroU32::new(2).expect("2"),
        });
        let exhausted = Some((tonic::Code::ResourceExhausted as i32).to_string());
        for path in LIMITED_RPCS {
            // Keyed by caller name where there is one, by peer address otherwise.
            for (caller, ip) in [(Some("shop-a"), [10, 0, 0, 1]), (None, [10, 0, 0, 2])] {
                assert_eq!(code(&layer, request(path, caller, ip)).await, None);
                assert_eq!(code(&layer, request(path, caller, ip)).await, None);
                let mut codes = Vec::new();
                for _ in 0..3 {
                    codes.push(code(&layer, request(path, caller, ip)).await);
                }
                assert!(codes.contains(&exhausted), "{path} {caller:?}: {codes:?}");
            }
            // Another caller still has its burst.
            assert_eq!(
                code(&layer, request(path, Some("shop-b"), [10, 0, 0, 1])).await,
                None
            );
        }
        for _ in 0..10 {
            let other = request("/waybill.v1.OrderService/GetOrder", Some("shop-a"), [1; 4]);
            assert_eq!(code(&layer, other).await, None, "not limited");
        }
    }
}
