//! `waybill bench report` on a small scale: it runs on Postgres, every report is accepted (with
//! signature checks on), and the figures it prints are there. Timing is never asserted.
#![allow(clippy::unwrap_used)]

use waybill_service_kit::testing::{TestBackend, TestDatabase};
use waybill_status_ingest::bench::{BenchOptions, report_bench};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_report_accepts_every_report_and_prints_figures() {
    let test_db = TestDatabase::create(TestBackend::Postgres).await;
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
    assert_eq!(json["reports"], 300);
    assert!(json["ratio_to_raw"].as_f64().unwrap() > 0.0);

    // Every measured and warm-up report landed, and the raw side wrote as many.
    let waybill_service_kit::db::Backend::Postgres(pool) = db.backend() else {
        unreachable!()
    };
    let shipped: i64 =
        sqlx::query_scalar("SELECT count(*) FROM order_status_events WHERE status = 'SHIPPED'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(shipped, 300 + 20 + 300);

    let sqlite = TestDatabase::create(TestBackend::Sqlite).await;
    let error = report_bench(&sqlite.connect().await, &options)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("Postgres"), "{error}");
}
