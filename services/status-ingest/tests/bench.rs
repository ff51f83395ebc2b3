//! `waybill bench report` on a small scale, on both backends: every report is accepted (with
//! signature checks on), the raw side writes as many, and the figures it prints are there.
//! Timing is never asserted.
#![allow(clippy::unwrap_used)]

use waybill_service_kit::{on_both_backends, on_pool, testing::TestBackend, testing::TestDatabase};
use waybill_status_ingest::bench::{BenchOptions, report_bench};

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
    assert!(report.report_status_per_s > 0.0 && report.raw_inserts_per_s > 0.0);
    assert!(report.latency_ms.0 > 0.0 && report.latency_ms.0 <= report.latency_ms.1);

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
    assert!(json["ratio_to_raw"].as_f64().unwrap() > 0.0);
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
