//! `waybill dev`, the real binary: the whole system with both example partners in one
//! process. An order placed over gRPC reaches RECEIVED_BY_PARTNER through the in-process
//! partner; ctrl-c (SIGINT) stops it cleanly with exit status 0 and no error logged; started
//! again on the same data directory, the order is still there and the kept partner keys still
//! sign accepted reports.
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use waybill_proto::v1::{self as pb, OrderStatus, order_service_client::OrderServiceClient};
use waybill_test_kit::fixtures::sample_order;

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Dev {
    child: Child,
    stderr: std::thread::JoinHandle<String>,
}

/// Starts `waybill dev` in `dir` and waits for its banner; returns it with the banner.
fn start(dir: &Path, orders: SocketAddr) -> (Dev, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_waybill"))
        .current_dir(dir)
        .args(["dev", "--shipped-after-ms", "200"])
        .args(["--orders-listen", &orders.to_string()])
        .args(["--dispatcher-listen", &free_addr().to_string()])
        .args(["--status-ingest-listen", &free_addr().to_string()])
        .args(["--metrics-listen", &free_addr().to_string()])
        .env_remove("WAYBILL_DATABASE_URL")
        .env_remove("WAYBILL_KAFKA_BROKERS")
        .env_remove("WAYBILL_DATA_DIR")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let (lines, banner) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // The banner ends with the report-status command.
    while !text.contains("StatusIngest/ReportStatus") {
        let left = deadline.saturating_duration_since(Instant::now());
        match banner.recv_timeout(left) {
            Ok(line) => {
                text.push_str(&line);
                text.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                panic!("no banner from waybill dev within 60 s: {text}");
            }
        }
    }
    (Dev { child, stderr }, text)
}

impl Dev {
    /// ctrl-c; returns the exit status and everything logged.
    fn interrupt(mut self) -> (std::process::ExitStatus, String) {
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("waybill dev did not stop within 30 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (status, self.stderr.join().unwrap())
    }
}

async fn place(orders: SocketAddr, key: &str) -> String {
    let mut client = OrderServiceClient::connect(format!("http://{orders}"))
        .await
        .unwrap();
    client
        .place_order(sample_order(key, "US"))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap()
        .id
}

async fn get(orders: SocketAddr, order_id: &str) -> pb::Order {
    let mut client = OrderServiceClient::connect(format!("http://{orders}"))
        .await
        .unwrap();
    client
        .get_order(pb::GetOrderRequest {
            order_id: order_id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Polls until the order has `status` from `partner`.
async fn wait_for(orders: SocketAddr, order_id: &str, status: OrderStatus, partner: &str) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let order = get(orders, order_id).await;
        if order
            .status_history
            .iter()
            .any(|e| e.status() == status && e.partner_id == partner)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "order {order_id} not {status:?} by {partner} within 40 s: {order:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_the_partners_stops_on_ctrl_c_and_keeps_its_data() {
    let dir = std::env::temp_dir().join(format!("waybill-dev-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let orders = free_addr();

    let (dev, banner) = start(&dir, orders);
    assert!(banner.contains("kept between runs"), "{banner}");
    assert!(banner.contains("local-express (in-process)"), "{banner}");
    assert!(banner.contains("distance-freight (in-process)"), "{banner}");
    let first = place(orders, "dev-test-1").await;
    wait_for(
        orders,
        &first,
        OrderStatus::ReceivedByPartner,
        "local-express",
    )
    .await;
    let (status, logs) = dev.interrupt();
    assert!(status.success(), "exit {status}: {logs}");
    assert!(!logs.contains("ERROR"), "errors logged on ctrl-c:\n{logs}");
    assert!(dir.join(".waybill/waybill.db").exists());
    assert!(dir.join(".waybill/keys/local-express.pem").exists());

    // Again on the same directory: the order is there, partners are enrolled again without
    // complaint, and their kept keys still sign reports StatusIngest accepts.
    let (dev, _) = start(&dir, orders);
    let order = get(orders, &first).await;
    assert_eq!(order.id, first);
    assert!(
        order
            .status_history
            .iter()
            .any(|e| e.status() == OrderStatus::ReceivedByPartner)
    );
    let second = place(orders, "dev-test-2").await;
    wait_for(
        orders,
        &second,
        OrderStatus::ReceivedByPartner,
        "local-express",
    )
    .await;
    wait_for(orders, &second, OrderStatus::Shipped, "local-express").await;
    let (status, logs) = dev.interrupt();
    assert!(status.success(), "exit {status}: {logs}");
    assert!(!logs.contains("ERROR"), "errors logged on ctrl-c:\n{logs}");
    let _ = std::fs::remove_dir_all(&dir);
}
