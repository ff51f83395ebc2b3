//! The maintenance loop `waybill status-ingest` runs: expired token ids leave the replay guard
//! without anyone asking, on both backends; the ones still replayable stay.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration as StdDuration;

use chrono::Duration;
use common::{World, start};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use waybill_proto::v1::OrderStatus;
use waybill_status_ingest::store::AuthenticatedReport;
use waybill_test_kit::{TestBackend, eventually};

async fn expired_token_ids_are_forgotten(backend: TestBackend) {
    let world = World::new(backend).await;
    world.partner_with_key("acme").await;
    let order = world.order().await;
    world.route(order, "acme").await;
    for (report_id, kept_for) in [("r-1", 1), ("r-2", 10)] {
        let report = AuthenticatedReport {
            order_id: order,
            partner_id: "acme".into(),
            report_id: report_id.into(),
            status: OrderStatus::Shipped,
            tracking_id: String::new(),
            detail: String::new(),
            detail_code: String::new(),
            action_required: false,
            occurred_at: start(),
            token_id: Uuid::new_v4().to_string(),
            token_id_kept_until: start() + Duration::minutes(kept_for),
            key_id: "k1".into(),
        };
        world.store.record_report(&report).await.unwrap();
    }
    assert_eq!(world.token_ids().await, 2);
    world.clock.set(start() + Duration::minutes(5));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(waybill_status_ingest::maintain(
        world.deps(),
        StdDuration::from_millis(50),
        shutdown.clone(),
    ));
    eventually(
        StdDuration::from_secs(5),
        "the expired token id purged",
        || async { world.token_ids().await == 1 },
    )
    .await;
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(world.token_ids().await, 1, "the unexpired one stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    expired_token_ids_are_forgotten(TestBackend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    expired_token_ids_are_forgotten(TestBackend::Sqlite).await;
}
