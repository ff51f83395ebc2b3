//! `waybill bench place`, the real binary, briefly, on Postgres and SQLite: every order placed
//! (and in the database: the warm-up's, the measured ones and the limit's own), the placing
//! write's own rate measured in the same run as the limit, and the figures consistent with each
//! other (each rate is its orders over its seconds, the ratio one rate over the other, the
//! percentiles in order and within the run); `--prefill` writing its finished orders once. Not
//! a timed test: the ratio is printed, never asserted.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use serde_json::Value;
use waybill_service_kit::on_pool;
use waybill_test_kit::{TestBackend, TestDatabase};

const REQUESTS: u64 = 200;
/// `--warmup`: placed through gRPC before the measured requests.
const WARMUP: u64 = 10;

fn bench(url: &str) -> Value {
    bench_with(url, &[])
}

fn bench_with(url: &str, extra: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_waybill"))
        .args(["bench", "place", "--json", "-c", "4"])
        .args(["--warmup", &WARMUP.to_string()])
        .args(["-n", &REQUESTS.to_string(), "--database-url", url])
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["benchmark"], "place");
    assert_eq!(
        (report["requests"].as_u64(), report["errors"].as_u64()),
        (Some(REQUESTS), Some(0))
    );
    let figure = |value: &Value, key: &str| {
        value[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {report:#}"))
    };
    // Each rate is its orders over its own seconds; both positive (work was done).
    let (throughput, seconds) = (
        figure(&report, "throughput_per_s"),
        figure(&report, "seconds"),
    );
    assert_eq!(report["limit"]["orders"], REQUESTS, "{report:#}");
    let (limit, limit_seconds) = (
        figure(&report["limit"], "orders_per_second"),
        figure(&report["limit"], "seconds"),
    );
    assert!(throughput > 0.0 && limit > 0.0, "{report:#}");
    for (rate, seconds) in [(throughput, seconds), (limit, limit_seconds)] {
        assert!(
            (rate * seconds - REQUESTS as f64).abs() < 1e-6 * REQUESTS as f64,
            "{report:#}"
        );
    }
    let ratio = figure(&report, "ratio");
    assert!((ratio - throughput / limit).abs() < 1e-9, "{report:#}");
    // Percentiles in order, and no request longer than the measured time it was part of (the
    // histogram keeps three significant digits: a value may read up to 0.1 % high).
    let latency = &report["latency_ms"];
    let (p50, p99, max) = (
        figure(latency, "p50"),
        figure(latency, "p99"),
        figure(latency, "max"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{report:#}");
    assert!(max <= seconds * 1000.0 * 1.001 + 0.001, "{report:#}");
    assert!(report["peak_rss_mib"].as_f64().unwrap() > 1.0, "{report:#}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_place_reports_the_ratio_to_the_placing_write_on_both_backends() {
    for backend in [TestBackend::Postgres, TestBackend::Sqlite] {
        let db = TestDatabase::create(backend).await;
        let url = db.url.clone();
        let report = tokio::task::spawn_blocking(move || bench(&url))
            .await
            .unwrap();
        let scheme = if backend == TestBackend::Postgres {
            "postgres://"
        } else {
            "sqlite:"
        };
        assert!(
            report["storage"].as_str().unwrap().starts_with(scheme),
            "{report:#}"
        );
        // The ledger: every order the report counts is in the database, and no other — the
        // warm-up's and the measured ones through gRPC, the limit's through the placing write
        // alone; each with its dispatch row (the outbox).
        let through_grpc = "SELECT count(*) FROM orders WHERE customer_id LIKE 'bench-customer-%'";
        assert_eq!(
            count(&db, through_grpc).await,
            (WARMUP + REQUESTS) as i64,
            "{backend:?}"
        );
        let limit = "SELECT count(*) FROM orders WHERE customer_id = 'bench-limit'";
        assert_eq!(count(&db, limit).await, REQUESTS as i64, "{backend:?}");
        assert_eq!(
            count(&db, "SELECT count(*) FROM orders").await,
            (WARMUP + 2 * REQUESTS) as i64,
            "{backend:?}"
        );
        assert_eq!(
            count(&db, "SELECT count(*) FROM dispatch").await,
            (WARMUP + 2 * REQUESTS) as i64,
            "{backend:?}"
        );
    }
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

/// `--prefill` brings the database up to N finished orders once (a second run adds none), each
/// acknowledged with three history events, all behind the publisher's cursor. `bench drain`
/// then refuses the database: `bench place` left its own orders waiting to be sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_writes_finished_orders_once_and_bench_drain_refuses_orders_waiting() {
    let db = TestDatabase::create(TestBackend::Postgres).await;
    let url = db.url.clone();
    let (first, second) = tokio::task::spawn_blocking(move || {
        let prefill = ["--prefill", "300"];
        (bench_with(&url, &prefill), bench_with(&url, &prefill))
    })
    .await
    .unwrap();
    assert_eq!(
        (&first["prefill"]["orders"], &first["prefill"]["added"]),
        (&Value::from(300), &Value::from(300)),
        "{first:#}"
    );
    assert_eq!(
        (&second["prefill"]["orders"], &second["prefill"]["added"]),
        (&Value::from(300), &Value::from(0)),
        "{second:#}"
    );
    let finished = "SELECT count(*) FROM orders o JOIN dispatch d ON d.order_id = o.id \
                    WHERE o.customer_id = 'bench-prefill' AND d.state = 'ACKNOWLEDGED'";
    assert_eq!(count(&db, finished).await, 300);
    let events = "SELECT count(*) FROM order_status_events e \
                  JOIN orders o ON o.id = e.order_id WHERE o.customer_id = 'bench-prefill'";
    assert_eq!(count(&db, events).await, 900);
    let ahead_of_the_cursor = "SELECT count(*) FROM order_status_events e \
                               JOIN orders o ON o.id = e.order_id \
                               WHERE o.customer_id = 'bench-prefill' \
                               AND (e.xid, e.order_id, e.seq) > \
                                   (SELECT xid, order_id, seq FROM event_cursor)";
    assert_eq!(count(&db, ahead_of_the_cursor).await, 0, "never walked");

    let output = Command::new(env!("CARGO_BIN_EXE_waybill"))
        .args([
            "bench",
            "drain",
            "--json",
            "-n",
            "10",
            "--database-url",
            &db.url,
        ])
        .env_remove("RUST_LOG")
        .env_remove("WAYBILL_KAFKA_BROKERS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    // Both runs' orders and their limits' are waiting: the count is named.
    let waiting = count(
        &db,
        "SELECT count(*) FROM dispatch WHERE state IN ('PENDING', 'RETRYING')",
    )
    .await;
    assert!(waiting > 0);
    assert!(
        stderr.contains(&format!(
            "holds {waiting} due orders that are not this run's"
        )),
        "{stderr}"
    );
}
