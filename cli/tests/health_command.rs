//! `waybill health`, the probe the compose file's health checks run: exit 0 only for a
//! SERVING answer (printed on stdout), over plaintext, TLS with the given CA, or mTLS with a
//! client certificate; 1 with the reason otherwise, naming the flag to pass when the probe and
//! the listener disagree on TLS.
#![allow(clippy::unwrap_used)]

use std::{
    net::TcpListener,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use waybill_test_kit::tls::{TestPki, write_private};

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn waybill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_waybill"))
        .args(args)
        .env_remove("WAYBILL_HEALTH_TLS_CA")
        .env_remove("WAYBILL_HEALTH_TLS_CERT")
        .env_remove("WAYBILL_HEALTH_TLS_KEY")
        .output()
        .unwrap()
}

/// Probes until the service answers SERVING (it takes a moment to start), or panics.
fn wait_serving(args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = waybill(args);
        if output.status.success() || Instant::now() > deadline {
            return output;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn health_probe_answers_for_plaintext_and_tls_listeners() {
    let dir = std::env::temp_dir().join(format!("waybill-health-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = TestPki::new();
    let tls_addr = format!("127.0.0.1:{}", free_port());
    let plain_addr = format!("127.0.0.1:{}", free_port());
    let start = |listen: &str, db: &str, tls: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_waybill"));
        command
            .args(["status-ingest", "--listen", listen, "--database-url", db])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if tls {
            command
                .arg("--tls-cert")
                .arg(pki.dir.join("server.pem"))
                .arg("--tls-key")
                .arg(pki.dir.join("server.key"));
        }
        Service(command.spawn().unwrap())
    };
    let db = |name: &str| format!("sqlite://{}?mode=rwc", dir.join(name).display());
    let _tls = start(&tls_addr, &db("tls.db"), true);
    let _plain = start(&plain_addr, &db("plain.db"), false);
    let ca = pki.dir.join("ca.pem");
    let ca = ca.to_str().unwrap();

    let ok = wait_serving(&[
        "health",
        &tls_addr,
        "--tls-ca",
        ca,
        "--server-name",
        "localhost",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(stdout(&ok), "SERVING\n");
    let ok = wait_serving(&["health", &plain_addr]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(stdout(&ok), "SERVING\n");

    // A named service the server reports.
    let ok = waybill(&[
        "health",
        &plain_addr,
        "--service",
        "waybill.v1.StatusIngest",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // Failures: exit 1 and say why.
    let unknown = waybill(&["health", &plain_addr, "--service", "no.such.Service"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("health check of"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    // The probe and the listener disagree on TLS: the reason names the flag.
    let plaintext_to_tls = waybill(&["health", &tls_addr, "--timeout", "2s"]);
    assert_eq!(plaintext_to_tls.status.code(), Some(1));
    assert_stderr(&plaintext_to_tls, "the listener speaks TLS: pass --tls-ca");
    assert_eq!(stdout(&plaintext_to_tls), "");
    let tls_to_plaintext = waybill(&["health", &plain_addr, "--tls-ca", ca]);
    assert_eq!(tls_to_plaintext.status.code(), Some(1));
    assert_stderr(
        &tls_to_plaintext,
        "--tls-ca was given but the listener speaks plaintext",
    );
    let untrusted = waybill(&[
        "health",
        &tls_addr,
        "--tls-ca",
        pki.dir.join("client.pem").to_str().unwrap(),
    ]);
    assert_eq!(untrusted.status.code(), Some(1));
    let nobody = waybill(&["health", &format!("127.0.0.1:{}", free_port())]);
    assert_eq!(nobody.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&nobody.stderr).contains("cannot connect"),
        "{}",
        String::from_utf8_lossy(&nobody.stderr)
    );
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn assert_stderr(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(expected), "{expected:?} not in: {stderr}");
}

#[test]
fn health_probe_presents_a_client_certificate_to_an_mtls_listener() {
    let dir = std::env::temp_dir().join(format!("waybill-health-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = TestPki::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let _mtls = Service(
        Command::new(env!("CARGO_BIN_EXE_waybill"))
            .args(["status-ingest", "--listen", &addr, "--database-url"])
            .arg(format!(
                "sqlite://{}?mode=rwc",
                dir.join("mtls.db").display()
            ))
            .arg("--tls-cert")
            .arg(pki.dir.join("server.pem"))
            .arg("--tls-key")
            .arg(pki.dir.join("server.key"))
            .arg("--tls-client-ca")
            .arg(pki.dir.join("ca.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let path = |name: &str| pki.dir.join(name).to_str().unwrap().to_owned();
    let (ca, cert, key) = (path("ca.pem"), path("client.pem"), path("client.key"));

    let ok = wait_serving(&[
        "health",
        &addr,
        "--tls-ca",
        &ca,
        "--server-name",
        "localhost",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(stdout(&ok), "SERVING\n");

    // The same from the environment (as a container health check sets it).
    let from_env = Command::new(env!("CARGO_BIN_EXE_waybill"))
        .args(["health", &addr, "--server-name", "localhost"])
        .env("WAYBILL_HEALTH_TLS_CA", &ca)
        .env("WAYBILL_HEALTH_TLS_CERT", &cert)
        .env("WAYBILL_HEALTH_TLS_KEY", &key)
        .output()
        .unwrap();
    assert!(
        from_env.status.success(),
        "{}",
        String::from_utf8_lossy(&from_env.stderr)
    );
    assert_eq!(stdout(&from_env), "SERVING\n");

    // No client certificate: refused at the handshake, and the reason names the flags.
    let without = waybill(&[
        "health",
        &addr,
        "--tls-ca",
        &ca,
        "--server-name",
        "localhost",
    ]);
    assert_eq!(without.status.code(), Some(1));
    assert_stderr(&without, "pass --tls-cert and --tls-key");
    assert_eq!(stdout(&without), "");

    // A certificate the listener's client CA did not issue.
    let rogue_cert = dir.join("rogue.pem");
    let rogue_key = dir.join("rogue.key");
    write_private(&rogue_cert, &pki.rogue_client.cert);
    write_private(&rogue_key, &pki.rogue_client.key);
    let rogue = waybill(&[
        "health",
        &addr,
        "--tls-ca",
        &ca,
        "--server-name",
        "localhost",
        "--tls-cert",
        rogue_cert.to_str().unwrap(),
        "--tls-key",
        rogue_key.to_str().unwrap(),
    ]);
    assert_eq!(rogue.status.code(), Some(1));
    assert_stderr(&rogue, "the listener refused the client certificate");

    // Without --tls-ca the listener's TLS is named first.
    let plaintext = waybill(&["health", &addr]);
    assert_eq!(plaintext.status.code(), Some(1));
    assert_stderr(&plaintext, "the listener speaks TLS: pass --tls-ca");

    // A client certificate needs the CA to check the listener with.
    let no_ca = waybill(&["health", &addr, "--tls-cert", &cert, "--tls-key", &key]);
    assert_eq!(no_ca.status.code(), Some(2));
    assert_stderr(&no_ca, "--tls-ca");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A listener that answers NOT_SERVING for a component: the status name on stdout, exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probe_prints_a_status_other_than_serving_and_exits_1() {
    use tonic_health::ServingStatus;
    use waybill_service_kit::grpc::{HealthParts, ServerLimits, serve_with_health};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let parts = HealthParts::new();
    parts
        .reporter()
        .set_service_status("waybill.test.Component", ServingStatus::NotServing)
        .await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            serve_with_health(
                listener,
                Default::default(),
                &[],
                &ServerLimits::default(),
                parts,
                shutdown,
            )
            .await
        }
    });
    let output = tokio::task::spawn_blocking(move || {
        waybill(&["health", &addr, "--service", "waybill.test.Component"])
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "NOT_SERVING\n");
    assert_stderr(&output, "reports NOT_SERVING");
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
