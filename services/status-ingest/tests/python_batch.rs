//! `ReportStatuses` from an independent client: a Python script with grpcio and PyJWT
//! (`tests/python/report_statuses.py`, stubs compiled from `proto/` by grpc_tools, tokens signed
//! as docs/partners.md says) sends one call of three reports to StatusIngest over loopback, on
//! Postgres: the valid one is recorded, the one on another partner's order and the one whose
//! token says another tracking id are refused each with `ReportStatus`'s code and reason, in
//! the call's order.
#![allow(clippy::unwrap_used)]

mod common;

use std::{path::PathBuf, process::Command};

use chrono::Duration;
use common::{AUDIENCE, service::Service, signer};
use waybill_test_kit::{TestBackend, require};
use waybill_token::keys;

fn python_with_grpc_and_pyjwt() -> bool {
    Command::new("python3")
        .args([
            "-c",
            "import grpc, grpc_tools, jwt, cryptography, google.protobuf",
        ])
        .output()
        .is_ok_and(|out| out.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_partner_sends_reports_together_and_gets_each_answer() {
    require!(
        python_with_grpc_and_pyjwt(),
        "python3 with grpcio, grpcio-tools and PyJWT (pip install grpcio grpcio-tools 'PyJWT[crypto]')"
    );
    let world = common::World::new(TestBackend::Postgres).await;
    world.partner("acme").await;
    world.partner("globex").await;
    let acme = signer(1, "k1");
    world.key("acme", &acme).await;
    let order = world.order().await;
    world.route(order, "acme").await;
    let foreign = world.order().await;
    world.route(foreign, "globex").await;
    let ingest = Service::start(world.deps()).await;

    let key_file =
        std::env::temp_dir().join(format!("waybill-py-batch-{}.pem", uuid::Uuid::new_v4()));
    let pem = keys::signing_key_to_pem(&waybill_token::SigningKey::from_bytes(&[1; 32])).unwrap();
    std::fs::write(&key_file, pem).unwrap();
    let at = (world.now() - Duration::seconds(5))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let reports = serde_json::json!([
        {"partner_id": "acme", "order_id": order.to_string(), "report_id": "py-1",
         "status": "RECEIVED_BY_PARTNER", "tracking_id": "PY-T1", "detail": "", "occurred_at": at,
         "traceparent": trace},
        {"partner_id": "acme", "order_id": foreign.to_string(), "report_id": "py-2",
         "status": "RECEIVED_BY_PARTNER", "tracking_id": "PY-T2", "detail": "", "occurred_at": at,
         "traceparent": ""},
        {"partner_id": "acme", "order_id": order.to_string(), "report_id": "py-3",
         "status": "SHIPPED", "tracking_id": "PY-T1", "detail": "", "occurred_at": at,
         "traceparent": trace, "claims": {"tracking_id": "SOMETHING-ELSE"}},
    ]);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new("python3")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/report_statuses.py"))
        .arg(root.join("proto"))
        .arg(root.join("examples/partners/python/partner.py"))
        .arg(ingest.address.to_string())
        .arg(&key_file)
        .arg("k1")
        .arg(AUDIENCE)
        .arg(world.now().timestamp().to_string())
        .arg(reports.to_string())
        .output()
        .unwrap();
    std::fs::remove_file(&key_file).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the Python client failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let codes: Vec<&str> = results
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        ["OK", "PERMISSION_DENIED", "UNAUTHENTICATED"],
        "{results:?}"
    );
    assert_eq!(results[0]["duplicate"], false);
    assert!(
        results[2]["message"]
            .as_str()
            .unwrap()
            .contains("claim_mismatch"),
        "{results:?}"
    );

    let row = world.order_row(order).await;
    assert_eq!(row.status, "RECEIVED_BY_PARTNER");
    assert_eq!(row.tracking_id.as_deref(), Some("PY-T1"));
    let history = world.history(order).await;
    assert_eq!(
        history.iter().filter(|e| e.partner_id == "acme").count(),
        2,
        "SENT_TO_PARTNER and the one report accepted: {history:?}"
    );
    let stats = ingest.stats().await;
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.rejected["not_routed"], 1);
    assert_eq!(stats.rejected["claim_mismatch"], 1);
    ingest.stop().await;
}
