//! The reference partner in Python (`examples/partners/python/partner.py`, written from
//! docs/partners.md and proto/ alone) against a running Waybill in the deployment's shape:
//! Orders, the dispatcher and StatusIngest as `waybill` processes on Postgres, a Tansu broker
//! process, the partner enrolled with its key and a route through DispatchAdmin.
//!
//! Orders are placed before the partner first joins (a new group must start at the earliest
//! offset), the partner is SIGKILLed from outside in the middle of a batch, then kills itself
//! right after storing a shipment (before its report is sent or its offset committed), and runs
//! again while more orders come. Every order must end acknowledged and shipped with exactly one
//! `RECEIVED_BY_PARTNER` and one `SHIPPED` event, one tracking id (the partner's shipment's),
//! one shipment row in the partner's store, and every report accepted by StatusIngest with no
//! refusal of any kind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/enrolment.rs"]
mod enrolment;
#[allow(dead_code)] // the process helpers this file does not use
#[path = "common/processes.rs"]
mod processes;

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use enrolment::{add_key, enroll, order_request};
use processes::{Loop, python_libraries};
use sqlx::{Connection as _, Row as _, SqliteConnection};
use uuid::Uuid;
use waybill_proto::v1::{
    self as pb, OrderStatus, dispatch_admin_client::DispatchAdminClient,
    order_service_client::OrderServiceClient, status_ingest_client::StatusIngestClient,
};
use waybill_test_kit::{TestBackend, TestDatabase, broker::TestBroker};

const PARTNER: &str = "pyexpress";
const COUNTRY: &str = "DE";
const AUDIENCE: &str = "waybill-python-test";
/// Orders placed before the partner first joins, while it runs the first time, and at the end.
const BEFORE_JOIN: usize = 6;
const FIRST_BATCH: usize = 24;
const LAST_BATCH: usize = 10;

/// The partner's process, its log appended to one file across restarts.
struct PythonPartner {
    env: Vec<(&'static str, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl PythonPartner {
    fn start(&mut self, extra: &[(&'static str, String)]) {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("python3")
            .arg(workspace.join("examples/partners/python/partner.py"))
            .envs(self.env.iter().chain(extra).map(|(k, v)| (*k, v.as_str())))
            .env("WAYBILL_PROTO_DIR", workspace.join("proto"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start python3");
        self.child = Some(child);
    }

    /// SIGKILL.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Waits for the process to exit on its own; its exit status.
    async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the partner did not exit within {within:?}; its log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!(
                "the partner exited ({status}); its log:\n{}",
                self.log_text()
            );
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PythonPartner {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The partner's store, read as its operator would.
struct Shipments {
    /// order id → tracking id.
    tracking: BTreeMap<String, String>,
    /// How many copies of each order the partner read (1 + redeliveries and re-sends).
    copies: BTreeMap<String, i64>,
    /// (report id, state, traceparent present).
    reports: Vec<(String, String, bool)>,
    set_aside: i64,
}

async fn shipments(db: &Path) -> Option<Shipments> {
    if !db.exists() {
        return None;
    }
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .ok()?;
    let rows = sqlx::query("SELECT order_id, tracking_id, copies FROM shipments")
        .fetch_all(&mut conn)
        .await
        .ok()?;
    let mut tracking = BTreeMap::new();
    let mut copies = BTreeMap::new();
    for row in rows {
        let order_id: String = row.get(0);
        tracking.insert(order_id.clone(), row.get(1));
        copies.insert(order_id, row.get(2));
    }
    let reports = sqlx::query("SELECT report_id, state, traceparent IS NOT NULL FROM reports")
        .fetch_all(&mut conn)
        .await
        .ok()?
        .into_iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let set_aside: i64 = sqlx::query("SELECT count(*) FROM set_aside")
        .fetch_one(&mut conn)
        .await
        .ok()?
        .get(0);
    let _ = conn.close().await;
    Some(Shipments {
        tracking,
        copies,
        reports,
        set_aside,
    })
}

async fn place(
    orders: &mut OrderServiceClient<tonic::transport::Channel>,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let reply = orders
            .place_order(order_request(&Uuid::new_v4().to_string(), COUNTRY))
            .await
            .unwrap();
        ids.push(reply.into_inner().order.unwrap().id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_reference_partner_ships_each_order_once_through_sigkills() {
    waybill_test_kit::require!(
        std::env::var_os("WAYBILL_TANSU_BIN").is_some(),
        "WAYBILL_TANSU_BIN is not set (scripts/test.sh installs Tansu and sets it)"
    );
    waybill_test_kit::require!(
        python_libraries(),
        "python3 with confluent-kafka, protobuf, grpcio, grpcio-tools and PyJWT[crypto] is \
         missing (scripts/test.sh installs them)"
    );
    let dir = std::env::temp_dir().join(format!("waybill-python-partner-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let database = TestDatabase::create(TestBackend::Postgres).await;
    let broker = TestBroker::tansu();
    let brokers = broker.bootstrap_servers().to_owned();
    let prefix = format!("py{}.partner.", &Uuid::new_v4().simple().to_string()[..8]);

    // Waybill: Orders, StatusIngest, the dispatcher (StatusIngest's address as the reply-to).
    let waybill = Loop::start(&database.url, &brokers, &prefix, AUDIENCE, &[], &dir).await;
    let (orders_addr, ingest_addr, dispatcher_addr) = (
        waybill.orders_addr,
        waybill.ingest_addr,
        waybill.dispatcher_addr,
    );

    // The partner, its route and its key, as an operator enrols them.
    let mut admin = DispatchAdminClient::connect(format!("http://{dispatcher_addr}"))
        .await
        .unwrap();
    enroll(&mut admin, PARTNER, COUNTRY, Duration::from_secs(600), 3).await;
    let key_file = dir.join("pyexpress.pem");
    let key_id = add_key(&mut admin, PARTNER, &key_file).await;

    let mut orders = OrderServiceClient::connect(format!("http://{orders_addr}"))
        .await
        .unwrap();
    // Before the partner's group exists: it must read them from the log's start.
    let mut placed = place(&mut orders, BEFORE_JOIN).await;

    let db = dir.join("pyexpress-shipments.db");
    let mut partner = PythonPartner {
        env: vec![
            ("WAYBILL_PARTNER_ID", PARTNER.to_owned()),
            ("WAYBILL_KAFKA_BROKERS", brokers.clone()),
            ("WAYBILL_TOPIC_PREFIX", prefix.clone()),
            // Tansu makes every group join wait ~23 s with librdkafka's default.
            (
                "WAYBILL_KAFKA_OPTIONS",
                "session.timeout.ms=6000".to_owned(),
            ),
            ("WAYBILL_PARTNER_KEY_FILE", key_file.display().to_string()),
            ("WAYBILL_PARTNER_KEY_ID", key_id.clone()),
            ("WAYBILL_TOKEN_AUDIENCE", AUDIENCE.to_owned()),
            ("WAYBILL_PARTNER_DB", db.display().to_string()),
            ("WAYBILL_SHIP_AFTER_MS", "500".to_owned()),
            // Each new shipment takes the partner's system a while: a batch is in progress
            // long enough to be killed in its middle.
            ("WAYBILL_WORK_MS", "100".to_owned()),
        ],
        log: dir.join("partner.log"),
        child: None,
    };
    partner.start(&[]);
    placed.extend(place(&mut orders, FIRST_BATCH).await);
    let first_total = placed.len();

    // 1. SIGKILL from outside, mid-batch.
    let deadline = Instant::now() + Duration::from_secs(120);
    let shipped_at_kill = loop {
        partner.assert_running();
        let count = shipments(&db).await.map_or(0, |s| s.tracking.len());
        if count >= 10 {
            partner.kill();
            break shipments(&db).await.unwrap().tracking.len();
        }
        assert!(
            Instant::now() < deadline,
            "the partner stored {count} shipments in 120 s; its log:\n{}",
            partner.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        shipped_at_kill < first_total,
        "killed after the batch, not in its middle ({shipped_at_kill} of {first_total})"
    );

    // 2. Again, and it kills itself right after storing its third new shipment: the report
    // that shipment owes is not sent and its record's offset not committed.
    partner.start(&[("WAYBILL_CRASH_AFTER_SHIPMENTS", "3".to_owned())]);
    let status = partner.exited(Duration::from_secs(120)).await;
    assert_eq!(status.signal(), Some(9), "{status}: {}", partner.log_text());
    let after_crash = shipments(&db).await.unwrap().tracking.len();
    assert_eq!(after_crash, shipped_at_kill + 3);

    // 3. Once more, for good, while the last orders come.
    partner.start(&[]);
    placed.extend(place(&mut orders, LAST_BATCH).await);

    // Every order acknowledged and shipped.
    let deadline = Instant::now() + Duration::from_secs(180);
    let journeys = loop {
        partner.assert_running();
        let mut all = BTreeMap::new();
        let mut waiting = Vec::new();
        for id in &placed {
            let order = orders
                .get_order(pb::GetOrderRequest {
                    order_id: id.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            if order.status() == OrderStatus::Shipped {
                all.insert(id.clone(), order);
            } else {
                waiting.push(format!("{id} {:?}", order.status()));
            }
        }
        if waiting.is_empty() {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} orders not shipped in 180 s: {waiting:?}; the partner's log:\n{}",
            waiting.len(),
            placed.len(),
            partner.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // The partner's store settles a moment after StatusIngest answered.
    let deadline = Instant::now() + Duration::from_secs(30);
    let store = loop {
        let store = shipments(&db).await.unwrap();
        if store
            .reports
            .iter()
            .all(|(_, state, _)| state == "accepted")
            && store.reports.len() == 2 * placed.len()
        {
            break store;
        }
        assert!(
            Instant::now() < deadline,
            "reports not all accepted: {:?}",
            store.reports
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // One shipment per order, one tracking id per order, each the one on the order.
    let placed_set: BTreeSet<&String> = placed.iter().collect();
    assert_eq!(store.tracking.keys().collect::<BTreeSet<_>>(), placed_set);
    let distinct: BTreeSet<&String> = store.tracking.values().collect();
    assert_eq!(distinct.len(), placed.len(), "a tracking id given twice");
    for (id, order) in &journeys {
        let count = |status| {
            order
                .status_history
                .iter()
                .filter(|e| e.status() == status)
                .count()
        };
        assert_eq!(count(OrderStatus::ReceivedByPartner), 1, "order {id}");
        assert_eq!(count(OrderStatus::Shipped), 1, "order {id}");
        assert_eq!(order.partner_id, PARTNER);
        assert_eq!(order.tracking_id, store.tracking[id], "order {id}");
        let tracking_ids: BTreeSet<&str> = order
            .status_history
            .iter()
            .map(|e| e.tracking_id.as_str())
            .filter(|t| !t.is_empty())
            .collect();
        assert_eq!(tracking_ids.len(), 1, "order {id}: {tracking_ids:?}");
        let dispatch = admin
            .get_dispatch(pb::GetDispatchRequest {
                order_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(dispatch.state(), pb::DispatchState::Acknowledged, "{id}");
    }
    // The crash left a stored shipment whose record was not committed: read again, answered
    // from the store.
    assert!(
        store.copies.values().any(|copies| *copies > 1),
        "no order was read twice: {:?}",
        store.copies
    );
    assert_eq!(store.set_aside, 0);
    assert!(
        store.reports.iter().all(|(_, _, traced)| *traced),
        "a report without the order's trace"
    );

    // StatusIngest took every report once and refused none.
    let mut ingest = StatusIngestClient::connect(format!("http://{ingest_addr}"))
        .await
        .unwrap();
    let stats = ingest
        .get_report_stats(pb::GetReportStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.accepted, 2 * placed.len() as u64, "{stats:?}");
    assert!(
        stats.rejected.values().all(|count| *count == 0),
        "refusals: {:?}",
        stats.rejected
    );
    eprintln!(
        "python partner: {} orders, killed at {shipped_at_kill} shipments, crashed itself at \
         {after_crash}; {} duplicates answered",
        placed.len(),
        stats.duplicates
    );

    drop(partner);
    drop(waybill);
    let _ = std::fs::remove_dir_all(&dir);
}
