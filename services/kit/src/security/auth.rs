//! Caller identity, enforced in one tower layer for every service: who is calling (a bearer API
//! key, or a client certificate on an mTLS listener), in which role, and whether that role may
//! call the RPC. Handlers never see an unauthenticated call to a protected service.
//!
//! | service | who may call |
//! |---|---|
//! | `waybill.v1.OrderService` | storefronts |
//! | `waybill.v1.DispatchAdmin` | operators (each call is logged as an audit record) |
//! | `waybill.v1.StatusIngest` | anyone at the transport level: partners authenticate with signed report tokens inside the call |
//! | health, reflection | anyone |
//! | anything else | any authenticated caller |
//!
//! No credential (or an unknown one) is `UNAUTHENTICATED`; a known caller whose role does not
//! allow the RPC is `PERMISSION_DENIED`. Credentials are stored only as SHA-256 hashes and
//! compared in constant time; no credential is ever logged or echoed.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::{Either, Ready, ready};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Status, codegen::http};
use tower::{Layer, Service};
use tracing::info;

use super::incoming::PeerInfo;
use crate::text::quote;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Places and reads orders (`OrderService`).
    Storefront,
    /// Steers the dispatcher (`DispatchAdmin`).
    Operator,
}

impl Role {
    /// Lower-case name, as in the credentials file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Storefront => "storefront",
            Self::Operator => "operator",
        }
    }
}

/// An authenticated caller; a request extension on every call that carried a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Name from the credentials file (what audit records and rate limits use).
    pub name: Arc<str>,
    /// Role.
    pub role: Role,
}

/// One entry of the credentials file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    role: Role,
    /// Hex SHA-256 of the API key (`printf %s "$KEY" | sha256sum`).
    #[serde(default)]
    api_key_sha256: Option<String>,
    /// Hex SHA-256 of the client certificate's DER encoding
    /// (`openssl x509 -in client.pem -outform der | sha256sum`): pins one certificate.
    #[serde(default)]
    client_cert_sha256: Option<String>,
    /// The subject common name of client certificates (issued by the listener's client CA,
    /// which the handshake has verified): survives certificate renewal.
    #[serde(default)]
    client_cert_cn: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    callers: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Known {
    caller: Caller,
    api_key: Option<[u8; 32]>,
    client_cert: Option<[u8; 32]>,
    client_cn: Option<String>,
}

/// Who may call, from the credentials file (JSON):
///
/// ```json
/// {"callers": [
///   {"name": "shop-eu", "role": "storefront", "api_key_sha256": "<hex>"},
///   {"name": "ops-console", "role": "operator", "client_cert_sha256": "<hex>"},
///   {"name": "ops-team", "role": "operator", "client_cert_cn": "ops.example.com"}
/// ]}
/// ```
#[derive(Debug, Clone)]
pub struct Credentials {
    known: Vec<Known>,
}

/// Why the credentials file was refused.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// It could not be read.
    #[error("cannot read credentials file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// It is not valid.
    #[error("credentials file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (never a credential).
        reason: String,
    },
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The hex SHA-256 of an API key: what the credentials file stores in `api_key_sha256`
/// (the same as `printf %s "$KEY" | sha256sum`).
pub fn hash_api_key(key: &str) -> String {
    hex::encode(sha256(key.as_bytes()))
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text.trim()).ok()?;
    bytes.try_into().ok()
}

impl Credentials {
    /// Reads and checks the credentials file.
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| CredentialsError::Invalid {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses the credentials file's JSON.
    pub fn parse(json: &str) -> Result<Self, String> {
        let file: File = serde_json::from_str(json).map_err(|e| {
            // serde_json's message names the position, not the content.
            format!("not a valid credentials file: {e}")
        })?;
        let mut known = Vec::with_capacity(file.callers.len());
        for (index, entry) in file.callers.into_iter().enumerate() {
            let at = format!("callers[{index}] ({})", quote(&entry.name));
            if entry.name.trim().is_empty() || entry.name.len() > 128 {
                return Err(format!("{at}: name must be 1 to 128 characters"));
            }
            let api_key = match &entry.api_key_sha256 {
                Some(hash) => Some(
                    parse_hash(hash)
                        .ok_or_else(|| format!("{at}: api_key_sha256 must be 64 hex digits"))?,
                ),
                None => None,
            };
            let client_cert = match &entry.client_cert_sha256 {
                Some(hash) => Some(
                    parse_hash(hash)
                        .ok_or_else(|| format!("{at}: client_cert_sha256 must be 64 hex digits"))?,
                ),
                None => None,
            };
            let client_cn = entry.client_cert_cn.filter(|cn| !cn.trim().is_empty());
            if api_key.is_none() && client_cert.is_none() && client_cn.is_none() {
                return Err(format!(
                    "{at}: give api_key_sha256, client_cert_sha256 or client_cert_cn"
                ));
            }
            known.push(Known {
                caller: Caller {
                    name: entry.name.into(),
                    role: entry.role,
                },
                api_key,
                client_cert,
                client_cn,
            });
        }
        Ok(Self { known })
    }

    /// The caller an API key belongs to. Every entry is compared, in constant time, so the
    /// answer's timing tells nothing about which hash came close.
    pub fn by_api_key(&self, key: &str) -> Option<Caller> {
        let hash = sha256(key.as_bytes());
        let mut found = None;
        for known in &self.known {
            if let Some(expected) = &known.api_key
                && bool::from(expected.ct_eq(&hash))
                && found.is_none()
            {
                found = Some(known.caller.clone());
            }
        }
        found
    }

    /// The caller a (handshake-verified) client certificate belongs to: by its fingerprint
    /// first, then by its subject common name.
    pub fn by_client_cert(&self, der: &[u8]) -> Option<Caller> {
        let hash = sha256(der);
        let pinned = self.known.iter().find(|known| {
            known
                .client_cert
                .as_ref()
                .is_some_and(|expected| bool::from(expected.ct_eq(&hash)))
        });
        if let Some(known) = pinned {
            return Some(known.caller.clone());
        }
        let cn = common_name(der)?;
        self.known
            .iter()
            .find(|known| known.client_cn.as_deref() == Some(cn.as_str()))
            .map(|known| known.caller.clone())
    }
}

/// The subject common name of a DER certificate, if it has exactly one.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = cert.subject().iter_common_name();
    let first = names.next()?.as_str().ok()?.to_owned();
    names.next().is_none().then_some(first)
}

/// What an RPC path requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, reflection, StatusIngest's ReportStatus).
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
    match service {
        "waybill.v1.OrderService" => Access::Role(Role::Storefront),
        "waybill.v1.DispatchAdmin" => Access::Role(Role::Operator),
        "waybill.v1.StatusIngest"
        | "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => Access::Open,
        _ => Access::Authenticated,
    }
}

/// The layer: with credentials, enforces [`access_for`]; without (development on loopback),
/// lets every call through.
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
            Err(status) => Either::Left(ready(Ok(status.into_http()))),
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
            hex::encode(sha256(b"shop-key")),
            hex::encode(sha256(b"ops-key"))
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
        for open in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/waybill.v1.StatusIngest/ReportStatus",
        ] {
            assert!(authorize(&c, &request(open, None)).is_ok(), "{open}");
            assert!(authorize(&c, &request(open, Some("bad"))).is_ok(), "{open}");
        }
    }

    #[test]
    fn client_certificates_map_by_fingerprint_then_common_name() {
        let key = rcgen_free_cert("shop.example.com");
        let c = Credentials::parse(&format!(
            r#"{{"callers":[
                {{"name":"pinned","role":"operator","client_cert_sha256":"{}"}},
                {{"name":"by-cn","role":"storefront","client_cert_cn":"shop.example.com"}}
            ]}}"#,
            hex::encode(sha256(&key))
        ))
        .expect("valid");
        assert_eq!(
            c.by_client_cert(&key).map(|c| c.name),
            Some("pinned".into())
        );
        let c = Credentials::parse(
            r#"{"callers":[{"name":"by-cn","role":"storefront","client_cert_cn":"shop.example.com"}]}"#,
        )
        .expect("valid");
        assert_eq!(
            c.by_client_cert(&key).map(|c| c.role),
            Some(Role::Storefront)
        );
        assert_eq!(
            c.by_client_cert(&rcgen_free_cert("other.example.com")),
            None
        );
        assert_eq!(c.by_client_cert(b"not a certificate"), None);
    }

    /// A self-signed certificate with common name `cn` (DER), made with the test PKI's tool.
    fn rcgen_free_cert(cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn the_file_is_checked() {
        for bad in [
            r#"{"callers":[{"name":"x","role":"storefront"}]}"#,
            r#"{"callers":[{"name":"x","role":"admin","api_key_sha256":"00"}]}"#,
            r#"{"callers":[{"name":"x","role":"storefront","api_key_sha256":"zz"}]}"#,
            r#"{"callers":[{"name":"","role":"storefront","api_key_sha256":"00"}]}"#,
        ] {
            assert!(Credentials::parse(bad).is_err(), "{bad}");
        }
    }
}
