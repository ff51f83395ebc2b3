//! `waybill bench report`'s measurement on a small scale, on both backends: every report is accepted (with
//! signature checks on), the raw side writes as many, and the figures it prints agree with each
//! other (percentiles in order, the ratio is one rate over the other). Timing is never asserted.
#![allow(clippy::unwrap_used)]

use waybill_service_kit::on_pool;
use waybill_test_kit::{TestBackend, TestDatabase, on_both_backends};

use super::measure::{BenchOptions, report_bench};

on_both_backends!(bench_report_accepts_every_report_and_prints_figures);

async fn bench_report_accepts_every_report_and_prints_figures(backend: TestBackend) {
    let test_db = TestDatabase::create(backend).await;
    let db = test_db.connect().await;
    let options = BenchOptions {
        reports: 300,
        concurrency: 4,
        warmup: 20,
    };
    let report = report_bench(&db, &options).await.unwrap();
    assert_eq!(report.errors, 0);
    // Work was done on both sides: both rates are positive, and the ratio is one over the other.
    assert!(
        report.report_status_per_s > 0.0 && report.raw_inserts_per_s > 0.0,
        "{report:?}"
    );
    assert_eq!(
        report.ratio(),
        report.report_status_per_s / report.raw_inserts_per_s
    );
    let (p50, p99, max) = report.latency_ms;
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{report:?}");

    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["benchmark"], "report");
    assert_eq!(
        json["storage"],
        match backend {
            TestBackend::Postgres => "postgres",
            TestBackend::Sqlite => "sqlite",
        }
    );
    assert_eq!(json["reports"], 300);
    assert_eq!(json["concurrency"], 4);
    assert_eq!(json["errors"], 0);
    // The printed figures are the report's, rounded as printed: a rate to 0.1, a latency to
    // 0.001 ms, the ratio to 0.001 (of the unrounded rates).
    let printed = |key: &str| json[key].as_f64().unwrap();
    let latency = |key: &str| json["latency_ms"][key].as_f64().unwrap();
    let close = |printed: f64, exact: f64, step: f64| (printed - exact).abs() <= step / 2.0 + 1e-9;
    assert!(
        close(
            printed("report_status_per_s"),
            report.report_status_per_s,
            0.1
        ),
        "{json:#}"
    );
    assert!(
        close(printed("raw_inserts_per_s"), report.raw_inserts_per_s, 0.1),
        "{json:#}"
    );
    for (key, exact) in [("p50", p50), ("p99", p99), ("max", max)] {
        assert!(close(latency(key), exact, 0.001), "{key}: {json:#}");
    }
    assert!(latency("p50") <= latency("p99") && latency("p99") <= latency("max"));
    assert!(
        close(printed("ratio_to_raw"), report.ratio(), 0.001),
        "{json:#}"
    );
    assert_eq!(
        json["checkpointed"], true,
        "the tests connect as a superuser"
    );

    // Every measured and warm-up report landed, and the raw side wrote as many.
    let shipped: i64 = on_pool!(db.backend(), |pool| {
        sqlx::query_scalar("SELECT count(*) FROM order_status_events WHERE status = 'SHIPPED'")
            .fetch_one(pool)
            .await
            .unwrap()
    });
    assert_eq!(shipped, 300 + 20 + 300);
}
