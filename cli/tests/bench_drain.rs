//! `waybill bench drain`, the real binary, on a small outbox and the embedded broker: every
//! order drained (the bench itself checks against the database that each is recorded `SENT`
//! with its `SENT_TO_PARTNER` event published, and fails otherwise), the bare-SQL limit measured
//! in the same run on Postgres, and the figures consistent with each other. Not a timed test:
//! the ratio is printed, never asserted.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use serde_json::Value;
use waybill_service_kit::on_pool;
use waybill_test_kit::{TestBackend, TestDatabase};

const ORDERS: u64 = 600;

/// Runs the bench on `url` with `dispatchers`; returns its JSON after checking the common
/// figures.
fn bench(url: &str, dispatchers: u32) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_waybill"))
        .args(["bench", "drain", "--json", "--batch-size", "200"])
        .args(["--orders", &ORDERS.to_string(), "--limit-orders", "1500"])
        .args(["--dispatchers", &dispatchers.to_string()])
        .args(["--database-url", url])
        .env_remove("RUST_LOG")
        .env_remove("WAYBILL_KAFKA_BROKERS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["benchmark"], "drain");
    assert_eq!(report["broker"], "embedded");
    assert_eq!(report["orders"], ORDERS);
    assert_eq!(report["dispatchers"], dispatchers);
    assert_eq!(report["drain"]["orders"], ORDERS);
    let rate = report["drain"]["orders_per_second"].as_f64().unwrap();
    let seconds = report["drain"]["seconds"].as_f64().unwrap();
    assert!(
        rate > 0.0 && (rate * seconds - ORDERS as f64).abs() < 1.0,
        "{report:#}"
    );
    // Each order's PLACED and SENT_TO_PARTNER events went to the order-events topic.
    assert!(
        report["events_published"].as_u64().unwrap() >= 2 * ORDERS,
        "{report:#}"
    );
    assert_eq!(report["broker_only"]["orders"], ORDERS);
    assert!(report["peak_rss_mib"].as_f64().unwrap() > 1.0, "{report:#}");
    report
}

/// Rows of `sql`'s single count on `db`.
async fn count(db: &TestDatabase, sql: &str) -> i64 {
    let db = db.connect().await;
    let count: i64 = on_pool!(db.backend(), |pool| {
        sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
    });
    db.close().await;
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drain_on_postgres_reports_the_ratio_to_the_bare_sql_limit() {
    let db = TestDatabase::create(TestBackend::Postgres).await;
    let url = db.url.clone();
    let report = tokio::task::spawn_blocking(move || bench(&url, 2))
        .await
        .unwrap();
    assert!(
        report["storage"]
            .as_str()
            .unwrap()
            .starts_with("postgres://")
    );
    // The limit ran on its own orders, rounded up to whole batches of 1,000, before the drain
    // and again after it; the two together are the limit.
    let limit = &report["limit"];
    let (before, after) = (&report["limit_before"], &report["limit_after"]);
    assert_eq!(before["orders"], 2_000, "{report:#}");
    assert_eq!(after["orders"], 2_000, "{report:#}");
    assert_eq!(limit["orders"], 4_000, "{report:#}");
    let seconds = |rate: &serde_json::Value| rate["seconds"].as_f64().unwrap();
    assert!(
        (seconds(limit) - seconds(before) - seconds(after)).abs() < 1e-6,
        "{report:#}"
    );
    // The dispatcher's own CPU time during the drain: no more than every core for the whole
    // drain (and a tick, /proc's unit, for rounding), and some of it (a small drain may take
    // under a tick).
    let cores = std::thread::available_parallelism().unwrap().get() as f64;
    let within = |used: f64, seconds: f64| (0.0..=seconds * cores + 0.01).contains(&used);
    let drain_seconds = seconds(&report["drain"]);
    if std::path::Path::new("/proc/self/stat").exists() {
        let cpu = report["drain_cpu_seconds"].as_f64().unwrap();
        assert!(within(cpu, drain_seconds), "{report:#}");
    }
    // Every phase started right after a checkpoint (the test role may run CHECKPOINT), and
    // the host's steal time was read for each (Linux): within what every core could lose
    // over the phase.
    assert_eq!(report["checkpointed"], true, "{report:#}");
    if std::path::Path::new("/proc/stat").exists() {
        for (phase, took) in [
            ("limit_before", seconds(before)),
            ("drain", drain_seconds),
            ("limit_after", seconds(after)),
        ] {
            let steal = report["steal_seconds"][phase].as_f64().unwrap();
            assert!(within(steal, took), "{phase}: {report:#}");
        }
    }
    let ratio = report["ratio"].as_f64().unwrap();
    let expected = report["drain"]["orders_per_second"].as_f64().unwrap()
        / limit["orders_per_second"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9, "{report:#}");
    // Nothing left behind: the limit's rows and the drain's are all SENT, every event published.
    assert_eq!(
        count(&db, "SELECT count(*) FROM dispatch WHERE state <> 'SENT'").await,
        0
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM dispatch WHERE state = 'SENT'").await,
        4_000 + ORDERS as i64
    );
    assert_eq!(
        count(
            &db,
            // Published: behind the publisher's cursor (migration 0006).
            "SELECT count(*) FROM order_status_events e WHERE e.published_at IS NULL \
             AND (e.xid, e.order_id, e.seq) > (SELECT xid, order_id, seq FROM event_cursor)"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drain_on_sqlite_drains_and_says_the_limit_is_postgres_only() {
    let db = TestDatabase::create(TestBackend::Sqlite).await;
    let url = db.url.clone();
    let report = tokio::task::spawn_blocking(move || bench(&url, 1))
        .await
        .unwrap();
    assert!(
        report["storage"].as_str().unwrap().starts_with("sqlite:"),
        "{report:#}"
    );
    assert!(
        report["limit"].is_null() && report["ratio"].is_null(),
        "{report:#}"
    );
    assert!(report["checkpointed"].is_null(), "{report:#}");
    // No limit phases on SQLite: no steal time claimed for them.
    assert!(
        report["steal_seconds"]["limit_before"].is_null()
            && report["steal_seconds"]["limit_after"].is_null(),
        "{report:#}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM dispatch WHERE state = 'SENT'").await,
        ORDERS as i64
    );
}
