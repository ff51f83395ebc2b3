//! `waybill bench e2e`, the real binary, briefly: a tiny fixed rate on the embedded defaults,
//! every order through to the in-process partner, the figures in one JSON object on the last
//! line.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use serde_json::Value;

#[test]
fn bench_e2e_measures_every_order_to_the_partner() {
    let output = Command::new(env!("CARGO_BIN_EXE_waybill"))
        .args(["bench", "e2e", "--rate", "20", "--duration", "1", "--json"])
        .env_remove("RUST_LOG")
        .env_remove("WAYBILL_DATABASE_URL")
        .env_remove("WAYBILL_KAFKA_BROKERS")
        .output()
        .unwrap();
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
    for figure in ["place_ms", "to_adapter_ms", "to_received_ms"] {
        let p50 = report[figure]["p50"].as_f64().unwrap();
        let p99 = report[figure]["p99"].as_f64().unwrap();
        let max = report[figure]["max"].as_f64().unwrap();
        assert!(
            0.0 < p50 && p50 <= p99 && p99 <= max,
            "{figure}: {report:#}"
        );
    }
    // Received is recorded after the adapter answered.
    assert!(report["to_received_ms"]["max"].as_f64() >= report["to_adapter_ms"]["p50"].as_f64());
    assert!(report["behind_schedule"].as_u64().is_some());
    assert!(report["peak_rss_mib"].as_f64().unwrap() > 1.0);
}
