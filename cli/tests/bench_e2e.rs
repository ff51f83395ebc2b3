//! `waybill bench e2e`, the real binary, briefly: a tiny fixed rate on the embedded defaults
//! (SQLite) and on Postgres, every order through to the in-process partner, the figures in one
//! JSON object on the last line.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use serde_json::Value;
use waybill_service_kit::testing::{TestBackend, TestDatabase};

/// Runs the bench at 20 orders/s for 1 s; returns its JSON after checking the common figures.
fn bench(database_url: Option<&str>) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_waybill"));
    command
        .args(["bench", "e2e", "--rate", "20", "--duration", "1", "--json"])
        .env_remove("RUST_LOG")
        .env_remove("WAYBILL_DATABASE_URL")
        .env_remove("WAYBILL_KAFKA_BROKERS");
    if let Some(url) = database_url {
        command.args(["--database-url", url]);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("offering 20 orders"),
        "progress on stderr: {stderr}"
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["benchmark"], "e2e");
    assert_eq!(report["offered"], 20);
    assert_eq!(report["placed"], 20);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["at_adapter"], 20, "{report:#}");
    assert_eq!(report["received"], 20, "{report:#}");
    // The ledger balances: each order handed to the adapter once, none received without it.
    assert_eq!(report["void"], false, "{report:#}");
    assert_eq!(report["adapter_repeats"], 0, "{report:#}");
    assert_eq!(report["received_without_call"], 0, "{report:#}");
    for figure in ["place_ms", "to_adapter_ms", "to_received_ms"] {
        let p50 = report[figure]["p50"].as_f64().unwrap();
        let p99 = report[figure]["p99"].as_f64().unwrap();
        let max = report[figure]["max"].as_f64().unwrap();
        assert!(
            0.0 < p50 && p50 <= p99 && p99 <= max,
            "{figure}: {report:#}"
        );
    }
    // RECEIVED_BY_PARTNER is recorded after the adapter was called.
    assert!(
        report["to_received_ms"]["max"].as_f64().unwrap()
            >= report["to_adapter_ms"]["p50"].as_f64().unwrap()
    );
    assert!(report["behind_schedule"].as_u64().is_some());
    assert!(report["peak_rss_mib"].as_f64().unwrap() > 1.0);
    report
}

#[test]
fn bench_e2e_on_the_embedded_defaults() {
    let report = bench(None);
    assert!(
        report["storage"].as_str().unwrap().starts_with("sqlite://"),
        "{report:#}"
    );
    assert_eq!(report["broker"], "embedded broker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_e2e_on_postgres() {
    let db = TestDatabase::create(TestBackend::Postgres).await;
    let url = db.url.clone();
    let report = tokio::task::spawn_blocking(move || bench(Some(&url)))
        .await
        .unwrap();
    assert!(
        report["storage"]
            .as_str()
            .unwrap()
            .starts_with("postgres://"),
        "{report:#}"
    );
}
