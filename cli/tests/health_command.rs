//! `waybill health`, the probe the compose file's health checks run: exit 0 only for a
//! SERVING answer, over plaintext or TLS with the given CA; 1 with the reason otherwise.
#![allow(clippy::unwrap_used)]

use std::{
    net::TcpListener,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use waybill_service_kit::testing::tls::TestPki;

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
    let ok = wait_serving(&["health", &plain_addr]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

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
    let plaintext_to_tls = waybill(&["health", &tls_addr, "--timeout", "2s"]);
    assert_eq!(plaintext_to_tls.status.code(), Some(1));
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
