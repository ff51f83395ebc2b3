//! `waybill partner distance-freight`, the real binary, as a deployment's partner container
//! runs it: configured by flags, against a running Waybill (Orders, dispatcher, StatusIngest on
//! loopback, a real Kafka-protocol broker); an order routed to it is acknowledged with its
//! tracking id, and SIGINT stops it with exit status 0. Bad settings are refused clearly.
#![allow(clippy::unwrap_used)]

#[path = "../../integration-tests/tests/support/connector.rs"]
mod support;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::*;
use waybill_integration_tests::AUDIENCE;
use waybill_proto::v1::OrderStatus;
use waybill_test_kit::process::KilledOnDrop;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waybill_partner_runs_an_example_partner_as_its_own_process() {
    let stack = stack().await;
    let key = enroll(&stack, "distance-freight", "CA", 9).await;
    let dir = std::env::temp_dir().join(format!("waybill-partner-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("distance-freight.pem");
    std::fs::write(
        &key_file,
        waybill_token::keys::signing_key_to_pem(&waybill_token::SigningKey::from_bytes(&[9; 32]))
            .unwrap(),
    )
    .unwrap();
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut partner = KilledOnDrop(
        Command::new(env!("CARGO_BIN_EXE_waybill"))
            .args(["partner", "distance-freight"])
            .args([
                "--kafka-brokers",
                &format!("region={}", stack.broker().bootstrap_servers()),
            ])
            .args(["--topic-prefix", &stack.topics.partner_prefix])
            .args(["--session-timeout-ms", "6000"])
            .args(["--key-file", key_file.to_str().unwrap()])
            .args(["--key-id", key.key_id()])
            .args(["--audience", AUDIENCE])
            .args(["--inbox", dir.join("inbox.db").to_str().unwrap()])
            .args(["--kafka-option", "client.id=distance-freight-test"])
            .args(["--metrics-listen", &metrics_addr.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let order_id = place(&stack, "CA", "").await;
    let order = wait_for_status(
        &stack,
        &order_id,
        OrderStatus::ReceivedByPartner,
        Duration::from_secs(40),
    )
    .await;
    assert_eq!(order.partner_id, "distance-freight");
    assert!(order.tracking_id.starts_with("DF"), "{}", order.tracking_id);

    // Its connector's series on --metrics-listen.
    let body = scrape(metrics_addr);
    assert!(
        body.lines().any(
            |l| l == r#"waybill_connector_orders_accepted_total{partner="distance-freight"} 1"#
        ),
        "{body}"
    );

    Command::new("kill")
        .args(["-INT", &partner.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = partner.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within 30 s of SIGINT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn waybill_partner_refuses_bad_settings_clearly() {
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_waybill"))
            .arg("partner")
            .args(args)
            .env_remove("WAYBILL_PARTNER_KEY_FILE")
            .env_remove("WAYBILL_PARTNER_KEY_ID")
            .env_remove("WAYBILL_KAFKA_OPTIONS")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&["local-express"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--key-file"), "{stderr}");
    let (code, stderr) = run(&["acme-express", "--key-file", "k.pem", "--key-id", "k"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("local-express") && stderr.contains("distance-freight"),
        "{stderr}"
    );
    let (code, stderr) = run(&[
        "local-express",
        "--key-file",
        "/nonexistent/k.pem",
        "--key-id",
        "k",
    ]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("/nonexistent/k.pem"), "{stderr}");
    let dir = std::env::temp_dir();
    let key = dir.join(format!("waybill-partner-key-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(
        &key,
        waybill_token::keys::signing_key_to_pem(&waybill_token::SigningKey::from_bytes(&[3; 32]))
            .unwrap(),
    )
    .unwrap();
    let (code, stderr) = run(&[
        "local-express",
        "--key-file",
        key.to_str().unwrap(),
        "--key-id",
        "k",
        "--kafka-option",
        "sasl.username",
    ]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("key=value"), "{stderr}");
    let _ = std::fs::remove_file(key);
}

/// `GET /metrics` over plain HTTP/1.0: the body.
fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(" 200 "), "{head}");
    body.to_owned()
}
