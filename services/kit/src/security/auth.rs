//! Caller identity, enforced in one tower layer for every service: who is calling (a bearer API
//! key, or a client certificate on an mTLS listener), in which role, and whether that role may
//! call the RPC. Handlers never see an unauthenticated call to a protected service.
//!
//! | service | who may call |
//! |---|---|
//! | `waybill.v1.OrderService` | storefronts |
//! | `waybill.v1.CatalogService` | `ListCatalogItems`: storefronts and operators; the rest: operators |
//! | `waybill.v1.DispatchAdmin` | operators (each call is logged as an audit record) |
//! | `waybill.v1.StatusIngest` | anyone at the transport level: partners authenticate with signed report tokens inside the call |
//! | health, reflection | anyone |
//! | anything else | any authenticated caller |
//!
//! No credential (or an unknown one) is `UNAUTHENTICATED`; a known caller whose role does not
//! allow the RPC is `PERMISSION_DENIED`. Credentials are stored only as SHA-256 hashes and
//! compared in constant time; no credential is ever logged or echoed.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::{Either, Ready, ready};
use tonic::{Status, codegen::http};
use tower::{Layer, Service};
use tracing::info;

use super::incoming::PeerInfo;
pub use super::{
    caller::{Caller, Role},
    credentials::{Credentials, CredentialsError, hash_api_key},
};
use crate::rpc_metrics::Refusal;
use crate::text::quote;

/// What an RPC path requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, reflection, StatusIngest's ReportStatus and ReportStatuses).
    Open,
    /// A caller in this role.
    Role(Role),
    /// Any authenticated caller.
    Authenticated,
}

/// The access rule of an RPC path (`/package.Service/Method`).
pub fn access_for(path: &str) -> Access {
    let service = path
        .strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .map_or("", |(service, _)| service);
    if path == "/waybill.v1.StatusIngest/GetReportStats" {
        // StatusIngest is open because partners prove themselves inside each report; its
        // counters are for operators.
        return Access::Role(Role::Operator);
    }
    if path == "/waybill.v1.CatalogService/ListCatalogItems" {
        // Storefronts may see what they can sell; operators what they manage.
        return Access::Authenticated;
    }
    match service {
        "waybill.v1.OrderService" => Access::Role(Role::Storefront),
        "waybill.v1.CatalogService" => Access::Role(Role::Operator),
        "waybill.v1.DispatchAdmin" => Access::Role(Role::Operator),
        "waybill.v1.StatusIngest"
        | "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => Access::Open,
        _ => Access::Authenticated,
    }
}

/// The layer: with credentials, enforces [`access_for`] against the callers in force at each
/// call (a reloaded credentials file applies to the next call); without (development on
/// loopback), lets every call through.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    credentials: Option<Arc<Credentials>>,
}

impl AuthLayer {
    /// Enforcing when `credentials` is set.
    pub fn new(credentials: Option<Arc<Credentials>>) -> Self {
        Self { credentials }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            credentials: self.credentials.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    credentials: Option<Arc<Credentials>>,
}

/// Identifies the caller of `request`: `Ok(None)` when it carried no credential, `Err` when it
/// carried one nobody owns.
fn identify<B>(
    credentials: &Credentials,
    request: &http::Request<B>,
) -> Result<Option<Caller>, Status> {
    if let Some(value) = request.headers().get(http::header::AUTHORIZATION) {
        let key = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header must be `Bearer <api key>`")
            })?;
        return credentials
            .by_api_key(key)
            .map(Some)
            .ok_or_else(|| Status::unauthenticated("unknown credential"));
    }
    let cert = request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|peer| peer.client_cert.as_ref());
    match cert {
        Some(cert) => credentials
            .by_client_cert(cert)
            .map(Some)
            .ok_or_else(|| Status::unauthenticated("client certificate not mapped to a caller")),
        None => Ok(None),
    }
}

/// The decision for one call: the caller to attach, or the refusal.
pub fn authorize<B>(
    credentials: &Credentials,
    request: &http::Request<B>,
) -> Result<Option<Caller>, Status> {
    let path = request.uri().path();
    match access_for(path) {
        // A bad credential does not close an open door (health probes, partners).
        Access::Open => Ok(identify(credentials, request).unwrap_or(None)),
        access => {
            let caller = identify(credentials, request)?.ok_or_else(|| {
                Status::unauthenticated(
                    "this call needs a credential: send `authorization: Bearer <api key>` (or a client certificate where mTLS is on)",
                )
            })?;
            match access {
                Access::Role(role) if caller.role != role => {
                    Err(Status::permission_denied(format!(
                        "caller {} (role {}) may not call {}",
                        quote(&caller.name),
                        caller.role.as_str(),
                        quote(path)
                    )))
                }
                _ => Ok(Some(caller)),
            }
        }
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Auth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let Some(credentials) = &self.credentials else {
            return Either::Right(self.inner.call(request));
        };
        match authorize(credentials, &request) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    if caller.role == Role::Operator {
                        let peer = request
                            .extensions()
                            .get::<PeerInfo>()
                            .and_then(|p| p.remote_addr);
                        info!(
                            target: "waybill::audit",
                            caller = %caller.name,
                            rpc = %request.uri().path(),
                            peer = ?peer,
                            "operator call"
                        );
                    }
                    request.extensions_mut().insert(caller);
                }
                Either::Right(self.inner.call(request))
            }
            Err(status) => {
                let refusal = if status.code() == tonic::Code::PermissionDenied {
                    Refusal::PermissionDenied
                } else {
                    Refusal::Unauthenticated
                };
                let mut response = status.into_http();
                response.extensions_mut().insert(refusal);
                Either::Left(ready(Ok(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> Credentials {
        Credentials::parse(&format!(
            r#"{{"callers":[
                {{"name":"shop","role":"storefront","api_key_sha256":"{}"}},
                {{"name":"ops","role":"operator","api_key_sha256":"{}"}}
            ]}}"#,
            hash_api_key("shop-key"),
            hash_api_key("ops-key")
        ))
        .expect("valid")
    }

    fn request(path: &str, key: Option<&str>) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(path);
        if let Some(key) = key {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn roles_map_to_services() {
        let c = credentials();
        let place = "/waybill.v1.OrderService/PlaceOrder";
        let admin = "/waybill.v1.DispatchAdmin/ListPartners";
        let ok = authorize(&c, &request(place, Some("shop-key"))).expect("storefront");
        assert_eq!(ok.map(|c| c.role), Some(Role::Storefront));
        for (path, key, code) in [
            (place, None, tonic::Code::Unauthenticated),
            (place, Some("wrong"), tonic::Code::Unauthenticated),
            (place, Some("ops-key"), tonic::Code::PermissionDenied),
            (admin, Some("shop-key"), tonic::Code::PermissionDenied),
            ("/other.Service/X", None, tonic::Code::Unauthenticated),
        ] {
            let status = authorize(&c, &request(path, key)).expect_err(path);
            assert_eq!(status.code(), code, "{path} {key:?}");
            assert!(!status.message().contains("-key"), "{}", status.message());
        }
        assert!(authorize(&c, &request(admin, Some("ops-key"))).is_ok());
        let stats = "/waybill.v1.StatusIngest/GetReportStats";
        for (key, code) in [
            (None, tonic::Code::Unauthenticated),
            (Some("shop-key"), tonic::Code::PermissionDenied),
        ] {
            let status = authorize(&c, &request(stats, key)).expect_err(stats);
            assert_eq!(status.code(), code, "{key:?}");
        }
        assert!(authorize(&c, &request(stats, Some("ops-key"))).is_ok());
        let list = "/waybill.v1.CatalogService/ListCatalogItems";
        for key in ["shop-key", "ops-key"] {
            assert!(authorize(&c, &request(list, Some(key))).is_ok(), "{key}");
        }
        for change in ["UpsertCatalogItems", "RetireCatalogItems"] {
            let path = format!("/waybill.v1.CatalogService/{change}");
            assert!(authorize(&c, &request(&path, Some("ops-key"))).is_ok());
            for (key, code) in [
                (None, tonic::Code::Unauthenticated),
                (Some("shop-key"), tonic::Code::PermissionDenied),
            ] {
                let status = authorize(&c, &request(&path, key)).expect_err(&path);
                assert_eq!(status.code(), code, "{path} {key:?}");
            }
        }
        assert_eq!(
            authorize(&c, &request(list, None))
                .expect_err("no key")
                .code(),
            tonic::Code::Unauthenticated
        );
        for open in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/waybill.v1.StatusIngest/ReportStatus",
            "/waybill.v1.StatusIngest/ReportStatuses",
        ] {
            assert!(authorize(&c, &request(open, None)).is_ok(), "{open}");
            assert!(authorize(&c, &request(open, Some("bad"))).is_ok(), "{open}");
        }
    }
}
