//! `waybill bench place`, the real binary, briefly, on Postgres and SQLite: every order placed,
//! the placing write's own rate measured in the same run as the limit, and the figures
//! consistent with each other. Not a timed test: the ratio is printed, never asserted.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use serde_json::Value;
use waybill_service_kit::testing::{TestBackend, TestDatabase};

const REQUESTS: u64 = 200;

fn bench(url: &str) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_waybill"))
        .args(["bench", "place", "--json", "--warmup", "10", "-c", "4"])
        .args(["-n", &REQUESTS.to_string(), "--database-url", url])
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
    let throughput = report["throughput_per_s"].as_f64().unwrap();
    assert_eq!(report["limit"]["orders"], REQUESTS, "{report:#}");
    let limit = report["limit"]["orders_per_second"].as_f64().unwrap();
    assert!(throughput > 0.0 && limit > 0.0, "{report:#}");
    let ratio = report["ratio"].as_f64().unwrap();
    assert!((ratio - throughput / limit).abs() < 1e-9, "{report:#}");
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
    }
}
