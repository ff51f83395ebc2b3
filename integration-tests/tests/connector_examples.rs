//! The two example partners (`waybill_connector_sdk::examples`) run against the real system:
//! `local-express` in-process through its adapter, `distance-freight` through the `main` of
//! `connector-sdk/examples/distance-freight.rs`, compiled here from its own source
//! (environment configuration, ctrl-c shutdown), in a child process. The sandbox markers drive every path.
#![allow(clippy::unwrap_used)]

#[path = "support/connector.rs"]
mod support;

#[allow(dead_code)]
#[path = "../../connector-sdk/examples/distance-freight.rs"]
mod distance_freight;

use std::{process::Stdio, time::Duration};

use support::*;
use waybill_integration_tests::AUDIENCE;
use waybill_proto::v1::{DispatchState, OrderStatus};

const WITHIN: Duration = Duration::from_secs(40);

/// Run as a child process by the test below: the `distance-freight` example's own `main`.
#[test]
#[ignore = "a child process of the examples test"]
fn child_distance_freight_main() {
    assert!(
        std::env::var("WAYBILL_PARTNER_KEY_FILE").is_ok(),
        "run by the examples test only"
    );
    distance_freight::main().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_example_partners_take_every_sandbox_path() {
    let stack = stack().await;
    let local_key = enroll(&stack, "local-express", "US", 3).await;
    let freight_key = enroll(&stack, "distance-freight", "CA", 4).await;

    // distance-freight: the example binary's main, configured by environment.
    let dir = std::env::temp_dir().join(format!("waybill-examples-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("distance-freight.pem");
    std::fs::write(
        &key_file,
        waybill_token::keys::signing_key_to_pem(&waybill_token::SigningKey::from_bytes(&[4; 32]))
            .unwrap(),
    )
    .unwrap();
    let mut freight = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_distance_freight_main",
            "--ignored",
            "--nocapture",
        ])
        .env("WAYBILL_PARTNER_ID", "distance-freight")
        .env(
            "WAYBILL_KAFKA_BROKERS",
            format!("region={}", stack.broker().bootstrap_servers()),
        )
        .env("WAYBILL_TOPIC_PREFIX", &stack.topics.partner_prefix)
        .env("WAYBILL_KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("WAYBILL_PARTNER_KEY_FILE", &key_file)
        .env("WAYBILL_PARTNER_KEY_ID", freight_key.key_id())
        .env("WAYBILL_TOKEN_AUDIENCE", AUDIENCE)
        .env("WAYBILL_INBOX", dir.join("inbox.db"))
        .env("WAYBILL_ADAPTER_TIMEOUT_MS", "1000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    // local-express: its adapter, in this process.
    let connector = builder(&stack, "local-express", &local_key)
        .adapter_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    let adapter = waybill_connector_sdk::examples::LocalExpress::new()
        .shipped_after(Duration::from_millis(200));
    let local = start(connector, adapter);

    let plain = place(&stack, "US", "").await;
    let rejected = place(&stack, "US", "Back door [reject]").await;
    let flaky = place(&stack, "US", "[fail-2]").await;
    let slow = place(&stack, "US", "[timeout]").await;
    let reversed = place(&stack, "US", "[out-of-order]").await;
    let broken = place(&stack, "US", "[permanent]").await;
    let far = place(&stack, "CA", "").await;
    let far_flaky = place(&stack, "CA", "[fail-1]").await;

    // Accepted at once with a tracking id, shipped a little later.
    let order = wait_for_status(&stack, &plain, OrderStatus::Shipped, WITHIN).await;
    assert!(
        order.tracking_id.starts_with("LX-"),
        "{}",
        order.tracking_id
    );
    assert_eq!(events(&order, OrderStatus::ReceivedByPartner), 1);
    // Rejected: reported, and the order leaves the partner (no other route: unroutable).
    let order = wait_for_status(&stack, &rejected, OrderStatus::RejectedByPartner, WITHIN).await;
    let event = order
        .status_history
        .iter()
        .find(|e| e.status() == OrderStatus::RejectedByPartner)
        .unwrap();
    assert_eq!(event.detail_code, "OUT_OF_AREA");
    // Retried after transient failures, and after a timed-out call.
    wait_for_status(&stack, &flaky, OrderStatus::Shipped, WITHIN).await;
    wait_for_status(&stack, &slow, OrderStatus::Shipped, WITHIN).await;
    // Out of order: DELIVERED before SHIPPED; both kept.
    let order = wait_for_status(&stack, &reversed, OrderStatus::Delivered, WITHIN).await;
    let order = if events(&order, OrderStatus::Shipped) == 0 {
        wait_for_status(&stack, &reversed, OrderStatus::Shipped, WITHIN).await
    } else {
        order
    };
    assert_eq!(events(&order, OrderStatus::Delivered), 1);
    // The customer sees where the order got to, not the latest event: the SHIPPED that came
    // after DELIVERED is kept for review and does not move the order back.
    assert_eq!(order.status(), OrderStatus::Delivered, "{order:?}");
    // Permanently failing: set aside, nothing reported.
    eventually(WITHIN, "permanent failure set aside", || async {
        local.health.metrics().set_aside == 1
    })
    .await;
    let rows = local
        .inbox
        .set_aside_rows("local-express", 10)
        .await
        .unwrap();
    assert_eq!(rows[0].order_id, broken);
    assert!(rows[0].reason.contains("[permanent]"), "{}", rows[0].reason);
    assert_eq!(
        dispatch_state(&stack, &broken).await,
        DispatchState::Sent,
        "left for the handover deadline and operators"
    );
    let metrics = local.health.metrics();
    assert!(metrics.adapter_timeouts >= 1);
    assert!(metrics.adapter_retries >= 3);

    // distance-freight (the binary): acknowledged once with its tracking id.
    for order_id in [&far, &far_flaky] {
        let order = wait_for_status(&stack, order_id, OrderStatus::ReceivedByPartner, WITHIN).await;
        assert!(order.tracking_id.starts_with("DF"), "{}", order.tracking_id);
        assert_eq!(order.partner_id, "distance-freight");
        assert_eq!(events(&order, OrderStatus::Shipped), 0);
    }

    // The binary stops gracefully on ctrl-c (SIGINT) and exits 0.
    let pid = freight.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || freight.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "distance-freight exited with {status}");
    local.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
