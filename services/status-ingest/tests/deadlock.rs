//! Postgres only: a report locks in the relay's order (an order's dispatch row, then the order),
//! so a relay batch holding the dispatch row and then wanting the order is never in a deadlock
//! with it: the report waits without holding the order, and is accepted once the relay commits
//! — never answered INTERNAL. A writer that does lock in the other order can deadlock with a
//! report; the report then runs again. SQLite has one writer at a time: no deadlock there.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{World, start};
use sqlx::Connection;
use uuid::Uuid;
use waybill_proto::v1::OrderStatus;
use waybill_service_kit::db::Backend;
use waybill_status_ingest::store::{AuthenticatedReport, ReportOutcome};
use waybill_test_kit::{TestBackend, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_waits_behind_the_relay_without_holding_the_order() {
    let world = World::new(TestBackend::Postgres).await;
    world.partner_with_key("acme").await;
    let order = world.order().await;
    world.route(order, "acme").await;
    let Backend::Postgres(pool) = world.db.backend() else {
        unreachable!()
    };

    // The "relay": holds the dispatch row; its deadlock timer is long, so if the report took
    // the order first, the report's backend (1 s, the default) would detect the cycle.
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
    let report = report(order);
    let reporting = tokio::spawn(async move { store.record_report(&report).await });

    // Wait until the report waits for the dispatch row.
    eventually(
        Duration::from_secs(10),
        "the report blocked on the dispatch row",
        || async { locks_waited_for(pool).await == 1 },
    )
    .await;
    // It waits without holding the order: anyone can lock the order now.
    let mut other = sqlx::PgConnection::connect(&world.test_db.url)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    let free = sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE NOWAIT")
        .bind(order)
        .execute(&mut other)
        .await;
    assert!(
        free.is_ok(),
        "the waiting report holds the order row: {free:?}"
    );
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    // Now the relay takes the order as well (dispatch row, then order) and commits.
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

/// A writer that locks in the other order (the order, then its dispatch row) does deadlock
/// with a report. When Postgres picks the report's transaction to break it (the report's
/// backend checks first: 1 s, the default, against the writer's 20 s), the report is run again
/// and accepted once the writer commits: the caller sees neither the deadlock nor INTERNAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_loses_a_deadlock_is_run_again_and_accepted() {
    let world = World::new(TestBackend::Postgres).await;
    world.partner_with_key("acme").await;
    let order = world.order().await;
    world.route(order, "acme").await;
    let Backend::Postgres(pool) = world.db.backend() else {
        unreachable!()
    };

    let mut writer = sqlx::PgConnection::connect(&world.test_db.url)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut writer).await.unwrap();
    sqlx::query("SET LOCAL deadlock_timeout = '20s'")
        .execute(&mut writer)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(order)
        .execute(&mut writer)
        .await
        .unwrap();

    let store = world.store.clone();
    let report = report(order);
    let reporting = tokio::spawn(async move { store.record_report(&report).await });
    // The report holds the dispatch row and waits for the order.
    eventually(
        Duration::from_secs(10),
        "the report blocked on the order row",
        || async { locks_waited_for(pool).await == 1 },
    )
    .await;
    // The writer now wants the dispatch row: a cycle, which the report's backend breaks by
    // rolling the report back; the writer gets the row and commits.
    sqlx::query("SELECT 1 FROM dispatch WHERE order_id = $1 FOR UPDATE")
        .bind(order)
        .execute(&mut writer)
        .await
        .unwrap();
    sqlx::query("COMMIT").execute(&mut writer).await.unwrap();

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
}

/// A `RECEIVED_BY_PARTNER` report from acme for `order`.
fn report(order: Uuid) -> AuthenticatedReport {
    AuthenticatedReport {
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
        key_id: "k1".into(),
    }
}

/// Sessions of this database waiting for a lock.
async fn locks_waited_for(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}
