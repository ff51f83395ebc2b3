//! `waybill sidecar`, the real binary, in front of a partner's own service written in Python
//! (grpcio, stubs generated from `proto/` at start-up: `sidecar_adapter.py`), against a running
//! Waybill (Orders, dispatcher, StatusIngest on loopback, a Kafka-protocol broker). The
//! sidecar is killed with SIGKILL mid-batch and started again: every order is acknowledged
//! once, reported SHIPPED once (through `PartnerReports`) and DELIVERED once (scheduled with
//! the answer), the service created one shipment per order (a second call
//! for one order is answered from its own store), tracking ids are unique, a rejection is
//! reported as such. Bad settings are refused with exit status 64.
#![allow(clippy::unwrap_used)]

#[path = "../../integration-tests/tests/support/connector.rs"]
mod support;

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::*;
use waybill_integration_tests::{AUDIENCE, TestStack};
use waybill_proto::v1::OrderStatus;
use waybill_test_kit::process::KilledOnDrop;

const PARTNER: &str = "py-freight";

fn python_ready() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts the sidecar for [`PARTNER`] in front of `adapter`, serving reports on `listen`.
fn sidecar(
    stack: &TestStack,
    dir: &Path,
    key_id: &str,
    adapter: SocketAddr,
    listen: SocketAddr,
) -> KilledOnDrop {
    let child = Command::new(env!("CARGO_BIN_EXE_waybill"))
        .arg("sidecar")
        .args(["--partner-id", PARTNER])
        .args(["--adapter", &format!("http://{adapter}")])
        .args(["--listen", &listen.to_string()])
        .args([
            "--kafka-brokers",
            &format!("region={}", stack.broker().bootstrap_servers()),
        ])
        .args(["--topic-prefix", &stack.topics.partner_prefix])
        .args(["--session-timeout-ms", "6000"])
        .args(["--key-file", dir.join("key.pem").to_str().unwrap()])
        .args(["--key-id", key_id])
        .args(["--audience", AUDIENCE])
        .args(["--inbox", dir.join("inbox.db").to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    KilledOnDrop(child)
}

/// The Python service's own records: (order id, tracking id) of each shipment, and how many
/// calls each order got.
async fn shipments(db: &Path) -> (Vec<(String, String)>, Vec<(String, i64)>) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let shipments = sqlx::query_as("SELECT order_id, tracking_id FROM shipments")
        .fetch_all(&pool)
        .await
        .unwrap();
    let calls = sqlx::query_as("SELECT order_id, COUNT(*) FROM calls GROUP BY order_id")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    (shipments, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_python_service_behind_the_sidecar_ships_every_order_once_across_a_crash() {
    waybill_test_kit::require!(
        python_ready(),
        "python3 with grpcio and grpcio-tools (pip install grpcio grpcio-tools)"
    );
    let stack = stack().await;
    let key = enroll(&stack, PARTNER, "CA", 11).await;
    let dir = std::env::temp_dir().join(format!("waybill-sidecar-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("key.pem"),
        waybill_token::keys::signing_key_to_pem(&waybill_token::SigningKey::from_bytes(&[11; 32]))
            .unwrap(),
    )
    .unwrap();
    let (adapter_addr, listen) = (free_addr(), free_addr());
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let db = dir.join("shipments.db");
    let adapter = KilledOnDrop(
        Command::new("python3")
            .arg(manifest.join("tests/sidecar_adapter.py"))
            .arg(manifest.join("../proto"))
            .arg(&db)
            .arg(adapter_addr.port().to_string())
            .arg(listen.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually(
        Duration::from_secs(30),
        "the Python service listens",
        || async { std::net::TcpStream::connect(adapter_addr).ok().map(|_| ()) },
    )
    .await;

    let mut running = sidecar(&stack, &dir, key.key_id(), adapter_addr, listen);
    let first = place(&stack, "CA", "").await;
    let order = wait_for_status(
        &stack,
        &first,
        OrderStatus::Shipped,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        order.tracking_id.starts_with("PY-"),
        "{}",
        order.tracking_id
    );

    // A batch, the sidecar killed while it works through it, started again, more orders.
    let mut orders = vec![first];
    for _ in 0..30 {
        orders.push(place(&stack, "CA", "").await);
    }
    // Killed once a few orders of the batch were confirmed to Waybill (their answers stored
    // in the sidecar's inbox before they were reported), others possibly mid-call.
    let confirmed = eventually(
        Duration::from_secs(60),
        "a few orders of the batch confirmed",
        || async {
            let mut confirmed = Vec::new();
            for order_id in &orders[1..] {
                if events(
                    &get_order(&stack, order_id).await,
                    OrderStatus::ReceivedByPartner,
                ) > 0
                {
                    confirmed.push(order_id.clone());
                }
            }
            (confirmed.len() >= 3).then_some(confirmed)
        },
    )
    .await;
    running.kill().unwrap();
    running.wait().unwrap();
    let mut running = sidecar(&stack, &dir, key.key_id(), adapter_addr, listen);
    for _ in 0..10 {
        orders.push(place(&stack, "CA", "").await);
    }
    let rejected = place(&stack, "CA", "[reject]").await;

    for order_id in &orders {
        let order = wait_for_status(
            &stack,
            order_id,
            OrderStatus::Shipped,
            Duration::from_secs(90),
        )
        .await;
        assert_eq!(
            events(&order, OrderStatus::ReceivedByPartner),
            1,
            "{order_id}"
        );
        assert_eq!(events(&order, OrderStatus::Shipped), 1, "{order_id}");
    }
    // The DELIVERED each answer scheduled, through the kill: once each.
    for order_id in &orders {
        let order = wait_for_status(
            &stack,
            order_id,
            OrderStatus::Delivered,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(events(&order, OrderStatus::Delivered), 1, "{order_id}");
    }
    wait_for_status(
        &stack,
        &rejected,
        OrderStatus::RejectedByPartner,
        Duration::from_secs(60),
    )
    .await;

    let (shipped, calls) = shipments(&db).await;
    assert_eq!(
        shipped.len(),
        orders.len(),
        "one shipment per order: {shipped:?}"
    );
    let tracking: HashSet<&String> = shipped.iter().map(|(_, tracking)| tracking).collect();
    assert_eq!(tracking.len(), orders.len(), "tracking ids are unique");
    for (order_id, tracking_id) in &shipped {
        assert!(orders.contains(order_id), "{order_id} was not placed here");
        assert_eq!(&get_order(&stack, order_id).await.tracking_id, tracking_id);
    }
    assert!(!shipped.iter().any(|(order_id, _)| order_id == &rejected));
    // An order confirmed before the kill is answered from the sidecar's inbox on redelivery:
    // the service is never asked about it again (only orders in flight at the kill may be).
    for order_id in &confirmed {
        let asked = calls.iter().find(|(id, _)| id == order_id).map(|(_, n)| *n);
        assert_eq!(
            asked,
            Some(1),
            "{order_id} was confirmed before the kill: {calls:?}"
        );
    }

    Command::new("kill")
        .args(["-INT", &running.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = running.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within 30 s of SIGINT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    drop(adapter);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_sidecar_refuses_bad_settings_with_exit_64() {
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_waybill"))
            .arg("sidecar")
            .args(["--key-file", "k.pem", "--key-id", "k"])
            .args(args)
            .env_remove("WAYBILL_PARTNER_ID")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&["--adapter", "http://127.0.0.1:1"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("--partner-id"), "{stderr}");
    let (code, stderr) = run(&["--adapter", "127.0.0.1:1", "--partner-id", "acme"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("http://host:port"), "{stderr}");
}
