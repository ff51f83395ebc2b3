//! Postgres only: a report that loses a deadlock against the relay's lock order (the relay locks
//! a dispatch row, then its order; a report locks the order, then the dispatch row) is run again
//! and accepted — never answered INTERNAL. SQLite has one writer at a time: no deadlock there.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{World, start};
use sqlx::Connection;
use uuid::Uuid;
use waybill_proto::v1::OrderStatus;
use waybill_service_kit::{
    db::Backend,
    testing::{TestBackend, eventually},
};
use waybill_status_ingest::store::{AuthenticatedReport, ReportOutcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_loses_a_deadlock_is_tried_again() {
    let world = World::new(TestBackend::Postgres).await;
    world.partner("acme").await;
    let order = world.order().await;
    world.route(order, "acme").await;
    let Backend::Postgres(pool) = world.db.backend() else {
        unreachable!()
    };

    // The "relay": holds the dispatch row; its deadlock timer is long, so the report's
    // backend (1 s, the default) is the one that detects the cycle and is rolled back.
    let mut relay = sqlx::PgConnection::connect(&world.test_db.url)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut relay).await.unwrap();
    sqlx::query("SET LOCAL deadlock_timeout = '20s'")
        .execute(&mut relay)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM dispatch WHERE order_id = $1 FOR UPDATE")
        .bind(order)
        .execute(&mut relay)
        .await
        .unwrap();

    let store = world.store.clone();
    let now = world.now();
    let report = AuthenticatedReport {
        order_id: order,
        partner_id: "acme".into(),
        report_id: "r-1".into(),
        status: OrderStatus::ReceivedByPartner,
        tracking_id: "T1".into(),
        detail: String::new(),
        detail_code: String::new(),
        action_required: false,
        occurred_at: start(),
        token_id: Uuid::new_v4().to_string(),
        token_id_kept_until: start() + chrono::Duration::minutes(3),
    };
    let reporting = tokio::spawn(async move { store.record_report(&report, now).await });

    // Wait until the report holds the order and waits for the dispatch row.
    eventually(
        Duration::from_secs(10),
        "the report blocked on the dispatch row",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            waiting == 1
        },
    )
    .await;
    // Now the relay wants the order: a cycle. The report's backend breaks it by rolling back.
    sqlx::query("UPDATE orders SET status_seq = status_seq WHERE id = $1")
        .bind(order)
        .execute(&mut relay)
        .await
        .unwrap();
    sqlx::query("COMMIT").execute(&mut relay).await.unwrap();

    let outcome = tokio::time::timeout(Duration::from_secs(20), reporting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(outcome, ReportOutcome::Accepted { .. }),
        "{outcome:?}"
    );
    assert_eq!(world.dispatch_row(order).await.state, "ACKNOWLEDGED");
    assert_eq!(
        world
            .history(order)
            .await
            .iter()
            .filter(|e| e.status == "RECEIVED_BY_PARTNER")
            .count(),
        1
    );
}
