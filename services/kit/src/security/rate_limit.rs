//! A per-caller rate limit on the RPCs that create work (`PlaceOrder`, `ReportStatus`), as a
//! tower layer over governor's keyed GCRA limiter: a caller over its rate gets
//! `RESOURCE_EXHAUSTED` at once, without the call reaching the handler or the database.
//!
//! The key is the authenticated caller's name; a call without one (development, or partners on
//! StatusIngest, who authenticate inside the call) is keyed by its peer IP address.
//!
//! A call that carries several units of work (`ReportStatuses`: many reports) draws on the
//! bucket of the call that carries one (`ReportStatus`), so the limit counts reports, however
//! they are sent: the door takes one, and the handler the rest once it knows how many
//! ([`RateCharge`], in the request's extensions). A batch refused there is counted as
//! `rate_limited` like one refused at the door.

use std::{
    future::Future,
    num::NonZeroU32,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
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
    REPORT_STATUSES,
];

/// The batch of reports: charged one at the door and the rest by its handler
/// ([`RateCharge`]), on `ReportStatus`'s bucket.
const REPORT_STATUSES: &str = "/waybill.v1.StatusIngest/ReportStatuses";

/// The bucket an RPC draws on: its own, or that of the call it batches.
fn bucket(rpc: &str) -> &str {
    if rpc == REPORT_STATUSES {
        "/waybill.v1.StatusIngest/ReportStatus"
    } else {
        rpc
    }
}

/// The rest of a batch's charge, in its request's extensions: the door took one unit, the
/// handler takes the others once it has read how many the call carries.
#[derive(Clone)]
pub struct RateCharge {
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
    key: String,
    refused: Arc<AtomicBool>,
}

impl std::fmt::Debug for RateCharge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateCharge")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RateCharge {
    /// Takes `more` units from the caller's bucket, all or none: `RESOURCE_EXHAUSTED` when the
    /// caller's rate does not allow them now (the call is then counted as `rate_limited`).
    pub fn take(&self, more: usize) -> Result<(), Status> {
        let Some(more) = u32::try_from(more).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        match self.limiter.check_key_n(&self.key, more) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => {
                self.refused.store(true, Ordering::Relaxed);
                Err(Status::resource_exhausted(
                    "rate limit for these reports exceeded for this caller (a batch counts each of its reports); retry with backoff or send fewer at once",
                ))
            }
        }
    }
}

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

/// One bucket per RPC (see [`bucket`]) and caller (or peer address, for calls without a
/// caller).
fn caller_key<B>(request: &http::Request<B>) -> String {
    let rpc = bucket(request.uri().path());
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
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    /// Refused at the door, passed on as it is, or (a batch) passed on and marked when its
    /// handler refused the rest of the charge: only the last is boxed.
    type Future = Either<
        Either<Ready<Result<S::Response, S::Error>>, S::Future>,
        Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        if !LIMITED_RPCS.contains(&path) {
            return Either::Left(Either::Right(self.inner.call(request)));
        }
        let batch = path == REPORT_STATUSES;
        let key = caller_key(&request);
        if self.limiter.check_key(&key).is_err() {
            // Forget idle callers now and then, so the key table stays small.
            self.limiter.retain_recent();
            let status = Status::resource_exhausted(
                "rate limit for this call exceeded for this caller; retry with backoff",
            );
            let mut response = status.into_http();
            response.extensions_mut().insert(Refusal::RateLimited);
            return Either::Left(Either::Left(ready(Ok(response))));
        }
        if !batch {
            return Either::Left(Either::Right(self.inner.call(request)));
        }
        let refused = Arc::new(AtomicBool::new(false));
        request.extensions_mut().insert(RateCharge {
            limiter: self.limiter.clone(),
            key,
            refused: Arc::clone(&refused),
        });
        let answer = self.inner.call(request);
        Either::Right(Box::pin(async move {
            let mut response = answer.await?;
            if refused.load(Ordering::Relaxed) {
                response.extensions_mut().insert(Refusal::RateLimited);
            }
            Ok(response)
        }))
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

    fn two_a_burst() -> RateLimitLayer {
        RateLimitLayer::new(RateLimit {
            per_second: NonZeroU32::MIN,
            burst: NonZeroU32::new(2).expect("2"),
        })
    }

    #[tokio::test]
    async fn each_caller_gets_its_own_burst_on_the_limited_rpcs_only() {
        let exhausted = Some((tonic::Code::ResourceExhausted as i32).to_string());
        for path in LIMITED_RPCS {
            // A layer each: ReportStatuses draws on ReportStatus's bucket (tested below).
            let layer = two_a_burst();
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
        let layer = two_a_burst();
        for _ in 0..10 {
            let other = request("/waybill.v1.OrderService/GetOrder", Some("shop-a"), [1; 4]);
            assert_eq!(code(&layer, other).await, None, "not limited");
        }
    }

    /// A handler that takes `more` units of the batch's charge, as StatusIngest's does.
    async fn batch_of(
        layer: &RateLimitLayer,
        request: http::Request<()>,
        more: usize,
    ) -> http::Response<()> {
        let service = layer.layer(service_fn(move |request: http::Request<()>| async move {
            let charge = request.extensions().get::<RateCharge>().cloned();
            let taken = charge.expect("a batch carries its charge").take(more);
            Ok::<_, Infallible>(match taken {
                Ok(()) => http::Response::new(()),
                Err(status) => status.into_http(),
            })
        }));
        service.oneshot(request).await.expect("infallible")
    }

    #[tokio::test]
    async fn a_batch_counts_each_report_on_the_single_calls_bucket() {
        let exhausted = (tonic::Code::ResourceExhausted as i32).to_string();
        let status = |response: &http::Response<()>| {
            response
                .headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap_or_default().to_owned())
        };
        let (single, batch) = (
            "/waybill.v1.StatusIngest/ReportStatus",
            "/waybill.v1.StatusIngest/ReportStatuses",
        );

        // Three reports in one call, with a burst of two: refused by the handler's charge,
        // and marked for the metrics as a rate-limit refusal.
        let layer = two_a_burst();
        let refused = batch_of(&layer, request(batch, None, [10, 0, 0, 1]), 2).await;
        assert_eq!(status(&refused).as_deref(), Some(exhausted.as_str()));
        assert_eq!(
            refused.extensions().get::<Refusal>(),
            Some(&Refusal::RateLimited)
        );

        // Two in one call fit the burst, and spend the single call's bucket too.
        let layer = two_a_burst();
        let taken = batch_of(&layer, request(batch, None, [10, 0, 0, 1]), 1).await;
        assert_eq!(status(&taken), None);
        assert_eq!(taken.extensions().get::<Refusal>(), None);
        assert_eq!(
            code(&layer, request(single, None, [10, 0, 0, 1])).await,
            Some(exhausted)
        );
        // Another caller's bucket is its own.
        assert_eq!(
            code(&layer, request(single, None, [10, 0, 0, 2])).await,
            None
        );
    }
}
