//! A listener's certificate is replaced while it serves (what SIGHUP or a change of the files
//! triggers): new connections get the new certificate, a connection made before keeps working.
#![allow(clippy::unwrap_used)]

use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use waybill_service_kit::{
    grpc::{ServerLimits, serve},
    security::{ReloadableTls, ServerSecurity},
};
use waybill_test_kit::tls::{TestPki, write_private};

async fn health(addr: std::net::SocketAddr, pki: &TestPki) -> Result<(), String> {
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(pki.client_config(None))
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    check(&mut HealthClient::new(channel)).await
}

async fn check(client: &mut HealthClient<Channel>) -> Result<(), String> {
    client
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
        .map_err(|status| format!("{status:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_certificate_serves_new_connections_and_keeps_open_ones() {
    let first = TestPki::new();
    let tls = ReloadableTls::load(first.server_files(false)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let limits = ServerLimits {
        security: ServerSecurity {
            tls: Some(tls.clone()),
            ..ServerSecurity::default()
        },
        ..ServerLimits::default()
    };
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { serve(listener, Default::default(), &[], &limits, shutdown).await }
    });

    let open = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(first.client_config(None))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut open = HealthClient::new(open);
    check(&mut open).await.unwrap();

    // Rotate: a certificate from another CA replaces the files. A broken file is refused first
    // and the old certificate stays in force.
    // (The serving task does this on SIGHUP and every 30 s; here the check runs directly.)
    let mut seen = tls.stamps();
    assert!(
        tls.reload_if_changed(&mut seen).is_none(),
        "nothing changed"
    );
    let second = TestPki::new();
    write_private(&first.dir.join("server.pem"), "not a certificate");
    assert!(matches!(tls.reload_if_changed(&mut seen), Some(Err(_))));
    health(addr, &first).await.unwrap();
    write_private(&first.dir.join("server.pem"), &second.server.cert);
    write_private(&first.dir.join("server.key"), &second.server.key);
    assert!(matches!(tls.reload_if_changed(&mut seen), Some(Ok(()))));

    health(addr, &second).await.unwrap();
    assert!(
        health(addr, &first).await.is_err(),
        "new connections get the new certificate"
    );
    check(&mut open).await.unwrap();

    shutdown.cancel();
    server.await.unwrap().unwrap();
}
