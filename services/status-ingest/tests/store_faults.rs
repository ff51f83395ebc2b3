//! The group commit's writer when its connection's host stops answering (Postgres, through a
//! proxy that stalls the connections it has while forwarding new ones, as a failover path
//! would): the batch is given up after the write limit, its callers are told to try again, and
//! the reports after it are recorded on a fresh connection instead of queueing behind a
//! statement that never returns.
#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::{service::world, start};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use waybill_proto::v1::OrderStatus;
use waybill_service_kit::db::Database;
use waybill_status_ingest::store::{
    AuthenticatedReport, IngestStore, ReportOutcome, SqlIngestStore, StoreError,
};
use waybill_test_kit::{TestBackend, TestDatabase};

/// acme's receipt of `order` (key `k1`) with a fresh token id.
fn receipt(order: Uuid, report_id: &str) -> AuthenticatedReport {
    AuthenticatedReport {
        order_id: order,
        partner_id: "acme".to_owned(),
        report_id: report_id.to_owned(),
        status: OrderStatus::ReceivedByPartner,
        tracking_id: String::new(),
        detail: String::new(),
        detail_code: String::new(),
        action_required: false,
        occurred_at: start() - chrono::Duration::minutes(5),
        token_id: Uuid::new_v4().to_string(),
        token_id_kept_until: start() + chrono::Duration::minutes(3),
        key_id: "k1".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_on_a_silent_connection_is_given_up_and_the_next_reports_are_recorded() {
    let (world, first, _) = world(TestBackend::Postgres).await;
    let (stalled, after) = (world.order().await, world.order().await);
    world.route(stalled, "acme").await;
    world.route(after, "acme").await;

    let (proxy, url) = world.test_db.behind_proxy();
    let settings = TestDatabase::quick_pool_settings();
    let db = Database::connect(&url, &settings, CancellationToken::new())
        .await
        .unwrap();
    let store = SqlIngestStore::new(&db, Arc::new(world.clock.clone()))
        .with_write_limit(Duration::from_millis(300));
    let recorded = store.record_report(&receipt(first, "r-1")).await;
    assert!(
        matches!(recorded, Ok(ReportOutcome::Accepted { .. })),
        "{recorded:?}"
    );

    proxy.stall();
    let given_up = tokio::time::timeout(
        Duration::from_secs(5),
        store.record_report(&receipt(stalled, "r-2")),
    )
    .await
    .expect("the stalled batch was answered within 5 s");
    assert!(
        matches!(&given_up, Err(StoreError::Batch(error)) if error.to_string().contains("did not finish within")),
        "{given_up:?}"
    );

    // The next report is not stuck behind the silent connection.
    let next = tokio::time::timeout(
        Duration::from_secs(10),
        store.record_report(&receipt(after, "r-3")),
    )
    .await
    .expect("a report after the stall was recorded within 10 s");
    assert!(
        matches!(next, Ok(ReportOutcome::Accepted { .. })),
        "{next:?}"
    );
    proxy.resume();
    db.close().await;
}
