//! The credentials file is re-read while the listener serves, as the TLS files are: a caller
//! added to the file is let in, one removed is refused, on the calls that follow (over the
//! same open connection too), after the file changed or a SIGHUP; a broken file is refused and
//! the callers in force stay. Each check calls a protected RPC over gRPC on loopback.
#![allow(clippy::unwrap_used)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio_util::sync::CancellationToken;
use tonic::{
    Code,
    body::Body,
    codegen::http::{self, Uri, uri::PathAndQuery},
    server::NamedService,
    service::Routes,
    transport::Channel,
};
use tonic_health::{
    pb::{HealthCheckRequest, health_client::HealthClient, health_server::HealthServer},
    server::HealthService,
};
use tower::{Service, ServiceExt};
use waybill_service_kit::{
    grpc::{ServerLimits, serve},
    security::{Credentials, ReloadableTls, ServerSecurity, auth::hash_api_key},
};
use waybill_test_kit::{
    eventually,
    tls::{TestPki, write_private},
};

const PROTECTED_CHECK: &str = "/waybill.test.Protected/Check";
const WAIT: Duration = Duration::from_secs(20);

/// The health service under a name of its own, which the auth layer protects (any
/// authenticated caller): a call is answered SERVING only once its credential is let in.
#[derive(Clone)]
struct Protected(HealthServer<HealthService>);

impl NamedService for Protected {
    const NAME: &'static str = "waybill.test.Protected";
}

impl Service<http::Request<Body>> for Protected {
    type Response = <HealthServer<HealthService> as Service<http::Request<Body>>>::Response;
    type Error = Infallible;
    type Future = <HealthServer<HealthService> as Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<http::Request<Body>>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        *request.uri_mut() = Uri::from_static("/grpc.health.v1.Health/Check");
        self.0.call(request)
    }
}

fn protected_routes() -> Routes {
    let health = HealthService::from_health_reporter(tonic_health::server::HealthReporter::new());
    Routes::new(Protected(HealthServer::new(health)))
}

/// A health client whose calls go to the protected name instead.
fn protected_client(
    channel: Channel,
) -> HealthClient<impl tonic::client::GrpcService<Body, ResponseBody = Body> + Clone> {
    HealthClient::new(channel.map_request(|mut request: http::Request<Body>| {
        let mut parts = request.uri().clone().into_parts();
        parts.path_and_query = Some(PathAndQuery::from_static(PROTECTED_CHECK));
        *request.uri_mut() = Uri::from_parts(parts).unwrap();
        request
    }))
}

/// The protected call with `key`: `Ok` when answered, the refusal's code otherwise.
async fn call_with<T>(client: &mut HealthClient<T>, key: &str) -> Result<(), Code>
where
    T: tonic::client::GrpcService<Body, ResponseBody = Body>,
    T::Error: Into<tonic::codegen::StdError>,
{
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    client
        .check(request)
        .await
        .map(|_| ())
        .map_err(|s| s.code())
}

fn credentials_json(keys: &[(&str, &str)]) -> String {
    let callers: Vec<String> = keys
        .iter()
        .map(|(name, key)| {
            format!(
                r#"{{"name":"{name}","role":"storefront","api_key_sha256":"{}"}}"#,
                hash_api_key(key)
            )
        })
        .collect();
    format!(r#"{{"callers":[{}]}}"#, callers.join(","))
}

struct Server {
    addr: SocketAddr,
    credentials: Arc<Credentials>,
    shutdown: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(file: &Path, tls: Option<ReloadableTls>, file_check_interval: Duration) -> Server {
    let credentials = Arc::new(Credentials::load(file).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let limits = ServerLimits {
        security: ServerSecurity {
            tls,
            credentials: Some(credentials.clone()),
            rate_limit: None,
        },
        file_check_interval,
        ..ServerLimits::default()
    };
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move { serve(listener, protected_routes(), &[], &limits, shutdown).await }
    });
    Server {
        addr,
        credentials,
        shutdown,
    }
}

async fn plain_channel(addr: SocketAddr) -> Channel {
    let endpoint = Channel::from_shared(format!("http://{addr}")).unwrap();
    eventually(WAIT, "the server accepts connections", || {
        let endpoint = endpoint.clone();
        async move { endpoint.connect().await.ok() }
    })
    .await
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("waybill-credentials-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_added_to_the_file_is_let_in_when_the_file_changes() {
    let dir = temp_dir();
    let file = dir.join("credentials.json");
    write_private(&file, &credentials_json(&[("shop-eu", "eu-key")]));
    let server = start(&file, None, Duration::from_millis(20)).await;
    let mut client = protected_client(plain_channel(server.addr).await);
    call_with(&mut client, "eu-key").await.unwrap();
    assert_eq!(
        call_with(&mut client, "us-key").await,
        Err(Code::Unauthenticated)
    );

    write_private(
        &file,
        &credentials_json(&[("shop-eu", "eu-key"), ("shop-us", "us-key")]),
    );
    // The same open connection: each call reads the callers in force.
    eventually(WAIT, "the new caller is let in", || {
        let mut client = client.clone();
        async move { call_with(&mut client, "us-key").await.is_ok() }
    })
    .await;
    call_with(&mut client, "eu-key").await.unwrap();
    assert_eq!(server.credentials.caller_count(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_removed_from_the_file_is_refused_and_a_broken_file_changes_nothing() {
    let dir = temp_dir();
    let file = dir.join("credentials.json");
    write_private(
        &file,
        &credentials_json(&[("shop-eu", "eu-key"), ("leaked", "leaked-key")]),
    );
    let server = start(&file, None, Duration::from_millis(20)).await;
    let mut client = protected_client(plain_channel(server.addr).await);
    call_with(&mut client, "leaked-key").await.unwrap();

    // A broken file (unparsable, then a bad hash) is refused by the same reload the task runs:
    // the callers in force stay, nobody is let in that was not before.
    for broken in [
        "{not json".to_owned(),
        r#"{"callers":[{"name":"shop-eu","role":"storefront","api_key_sha256":"abc"}]}"#.to_owned(),
    ] {
        write_private(&file, &broken);
        let error = server.credentials.reload().unwrap_err();
        let error = error.to_string();
        assert!(error.contains("credentials file"), "{error}");
        assert!(!error.contains(&hash_api_key("leaked-key")), "{error}");
        call_with(&mut client, "leaked-key").await.unwrap();
        call_with(&mut client, "eu-key").await.unwrap();
        assert_eq!(
            call_with(&mut client, "anything").await,
            Err(Code::Unauthenticated)
        );
    }

    write_private(&file, &credentials_json(&[("shop-eu", "eu-key")]));
    eventually(WAIT, "the removed caller is refused", || {
        let mut client = client.clone();
        async move { call_with(&mut client, "leaked-key").await == Err(Code::Unauthenticated) }
    })
    .await;
    call_with(&mut client, "eu-key").await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGHUP to this test process: the listener's one reload task re-reads the certificate and
/// the credentials file together. The files are not checked for changes during the test (an
/// hour apart), so only the signal can explain the reload.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_certificate_and_the_credentials_together() {
    let first = TestPki::new();
    let file = first.dir.join("credentials.json");
    write_private(&file, &credentials_json(&[("shop-eu", "eu-key")]));
    let tls = ReloadableTls::load(first.server_files(false)).unwrap();
    let server = start(&file, Some(tls), Duration::from_secs(3600)).await;
    let tls_channel = |pki: &TestPki| {
        Channel::from_shared(format!("https://{}", server.addr))
            .unwrap()
            .tls_config(pki.client_config(None))
            .unwrap()
    };
    // Serving (so its SIGHUP handler is in place, and a signal cannot end this process).
    let open = eventually(WAIT, "the server accepts connections", || {
        let endpoint = tls_channel(&first);
        async move { endpoint.connect().await.ok() }
    })
    .await;
    let mut open = protected_client(open);
    call_with(&mut open, "eu-key").await.unwrap();
    assert_eq!(
        call_with(&mut open, "us-key").await,
        Err(Code::Unauthenticated)
    );

    let second = TestPki::new();
    write_private(&first.dir.join("server.pem"), &second.server.cert);
    write_private(&first.dir.join("server.key"), &second.server.key);
    write_private(
        &file,
        &credentials_json(&[("shop-eu", "eu-key"), ("shop-us", "us-key")]),
    );
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());

    eventually(WAIT, "the new caller is let in after SIGHUP", || {
        let mut open = open.clone();
        async move { call_with(&mut open, "us-key").await.is_ok() }
    })
    .await;
    let renewed = tls_channel(&second).connect().await.unwrap();
    call_with(&mut protected_client(renewed), "us-key")
        .await
        .unwrap();
    assert!(
        tls_channel(&first).connect().await.is_err(),
        "new connections get the new certificate"
    );
}
