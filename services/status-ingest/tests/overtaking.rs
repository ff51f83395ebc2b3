//! A partner's report that overtakes the relay's bookkeeping of its order's send (the partner
//! consumed, answered and reported before the relay's batch recorded to whom it sent the order)
//! is never refused for good: on SQLite, where a relay batch's lease is written into the row, it
//! waits for the relay's commit on the change feed and lands, or past the wait is answered
//! `UNAVAILABLE` with a retry hint of a few milliseconds and changes nothing; on Postgres, where
//! the lease is the row's lock, it waits for the relay's transaction and lands.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    service::{Service, report, request, world},
    token_for,
};
use tonic::Code;
use waybill_proto::{headers::RETRY_AFTER_MS, v1::OrderStatus};
use waybill_service_kit::db::{Backend, Change};
use waybill_test_kit::{TestBackend, eventually};

/// The order's history: placed, sent by the relay, then the partner's receipt, in that order.
async fn assert_sent_then_received(world: &common::World, order: uuid::Uuid) {
    let statuses: Vec<String> = world
        .history(order)
        .await
        .into_iter()
        .map(|e| e.status)
        .collect();
    assert_eq!(
        statuses,
        ["PLACED", "SENT_TO_PARTNER", "RECEIVED_BY_PARTNER"]
    );
}

#[tokio::test]
async fn on_sqlite_a_report_for_an_order_in_a_relay_batch_is_asked_to_retry_then_lands() {
    let (world, _, acme) = world(TestBackend::Sqlite).await;
    let order = world.order().await;
    world.lease(order, "relay-1").await;
    let ingest = Service::start(world.deps()).await;
    let received = report(
        order,
        "acme",
        "r-1",
        OrderStatus::ReceivedByPartner,
        "1Z999",
        world.now(),
    );
    let before = world.state_of(order).await;
    let status = ingest
        .client
        .clone()
        .report_status(request(&received, token_for(&acme, &received, world.now())))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("retry"), "{}", status.message());
    assert_eq!(
        status
            .metadata()
            .get(RETRY_AFTER_MS)
            .unwrap()
            .to_str()
            .unwrap(),
        "10"
    );
    assert_eq!(world.state_of(order).await, before, "nothing changed");
    assert_eq!(
        ingest.stats().await.rejected.get("dispatch_in_flight"),
        Some(&1)
    );
    assert_eq!(
        world.metrics.snapshot().waited_for_relay,
        1,
        "it waited for the relay's commit before answering"
    );

    // The relay records the send: the retry (a fresh token, the same report id) lands.
    world.route(order, "acme").await;
    let answer = ingest
        .client
        .clone()
        .report_status(request(&received, token_for(&acme, &received, world.now())))
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.duplicate);
    assert_sent_then_received(&world, order).await;
    ingest.stop().await;
}

/// acme's receipt of `order`, reported on a task of its own: the report and its call.
fn receipt_sent(
    world: &common::World,
    ingest: &Service,
    acme: &waybill_token::TokenSigner,
    order: uuid::Uuid,
) -> (waybill_token::Report, Call) {
    let received = report(
        order,
        "acme",
        "r-1",
        OrderStatus::ReceivedByPartner,
        "1Z999",
        world.now(),
    );
    let mut client = ingest.client.clone();
    let request = request(&received, token_for(acme, &received, world.now()));
    let call = tokio::spawn(async move { client.report_status(request).await });
    (received, call)
}

/// A `ReportStatus` call on a task of its own.
type Call = tokio::task::JoinHandle<
    Result<tonic::Response<waybill_proto::v1::ReportStatusResponse>, tonic::Status>,
>;

#[tokio::test]
async fn on_sqlite_a_report_waits_for_the_relay_s_commit_and_lands_without_a_retry() {
    let (world, _, acme) = world(TestBackend::Sqlite).await;
    let order = world.order().await;
    world.lease(order, "relay-1").await;
    let ingest = Service::start(world.deps()).await;
    let (_, call) = receipt_sent(&world, &ingest, &acme, order);
    // Once the report waits for the relay, the relay's batch records the send and says so on
    // the change feed, as the dispatcher's store does after its commit.
    eventually(
        Duration::from_secs(20),
        "the report waiting for the relay",
        || std::future::ready(world.metrics.snapshot().waited_for_relay == 1),
    )
    .await;
    world.route(order, "acme").await;
    world.db.feed().publish(Change::OrderStatus(order));
    let answer = call.await.unwrap().unwrap().into_inner();
    assert!(!answer.duplicate);
    assert_sent_then_received(&world, order).await;
    let stats = ingest.stats().await;
    assert_eq!(stats.accepted, 1);
    assert_eq!(
        stats.rejected.get("dispatch_in_flight"),
        Some(&0),
        "never refused"
    );
    ingest.stop().await;
}

/// The relay's batch on Postgres: the order's dispatch row locked by an open transaction (its
/// lease).
async fn relay_batch_holding(
    pool: &sqlx::PgPool,
    order: uuid::Uuid,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut relay = waybill_service_kit::db::begin(pool).await.unwrap();
    sqlx::query("SELECT 1 FROM dispatch WHERE order_id = $1 FOR UPDATE")
        .bind(order)
        .execute(&mut *relay)
        .await
        .unwrap();
    relay
}

/// Until a transaction of this database waits on a row lock (the report's, on the relay's),
/// checking that `call` has not been answered meanwhile.
async fn until_a_report_waits_on_the_lock<T>(
    pool: &sqlx::PgPool,
    call: &tokio::task::JoinHandle<T>,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND datname = current_database()",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(!call.is_finished(), "answered before the relay recorded");
        assert!(Instant::now() < deadline, "the report never waited");
        tokio::task::yield_now().await;
    }
}

/// The relay records the send to acme and commits.
async fn relay_records_the_send(
    mut relay: sqlx::Transaction<'static, sqlx::Postgres>,
    order: uuid::Uuid,
) {
    sqlx::query("UPDATE dispatch SET state = 'SENT', partner_id = 'acme', route_id = 'r-acme', sent_at = now(), ack_due_at = now() + interval '10 minutes' WHERE order_id = $1")
        .bind(order)
        .execute(&mut *relay)
        .await
        .unwrap();
    sqlx::query("INSERT INTO order_status_events (order_id, seq, status, partner_id, occurred_at, recorded_at) SELECT $1, max(seq) + 1, 'SENT_TO_PARTNER', 'acme', now(), now() FROM order_status_events WHERE order_id = $1")
        .bind(order)
        .execute(&mut *relay)
        .await
        .unwrap();
    relay.commit().await.unwrap();
}

/// On Postgres: acme's receipt for an order of a relay batch, sent and waiting on the batch's
/// lock.
struct Waiting {
    world: common::World,
    acme: waybill_token::TokenSigner,
    order: uuid::Uuid,
    relay: sqlx::Transaction<'static, sqlx::Postgres>,
    ingest: Service,
    received: waybill_token::Report,
    call: Call,
}

async fn a_report_waiting_on_the_relay() -> Waiting {
    let (world, _, acme) = world(TestBackend::Postgres).await;
    let order = world.order().await;
    let Backend::Postgres(pool) = world.db.backend() else {
        unreachable!("a Postgres world")
    };
    let relay = relay_batch_holding(pool, order).await;
    let ingest = Service::start(world.deps()).await;
    let (received, call) = receipt_sent(&world, &ingest, &acme, order);
    until_a_report_waits_on_the_lock(pool, &call).await;
    Waiting {
        world,
        acme,
        order,
        relay,
        ingest,
        received,
        call,
    }
}

#[tokio::test]
async fn on_postgres_a_report_for_an_order_in_a_relay_batch_waits_for_it_and_lands() {
    let Waiting {
        world,
        order,
        relay,
        ingest,
        call,
        ..
    } = a_report_waiting_on_the_relay().await;
    // The relay records the send and commits: the waiting report lands after it.
    relay_records_the_send(relay, order).await;
    let answer = call.await.unwrap().unwrap().into_inner();
    assert!(!answer.duplicate);
    assert_sent_then_received(&world, order).await;
    ingest.stop().await;
}

/// A partner killed mid-call (or a client deadline) cancels its call, not the report it made:
/// the report lands once the relay commits, and is counted like any other; the partner's
/// re-send is a duplicate.
#[tokio::test]
async fn a_report_whose_caller_went_away_while_it_waited_lands_and_is_counted() {
    let Waiting {
        world,
        acme,
        order,
        relay,
        ingest,
        received,
        call,
    } = a_report_waiting_on_the_relay().await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    relay_records_the_send(relay, order).await;
    eventually(
        Duration::from_secs(20),
        "the abandoned report recorded and counted",
        || async { ingest.stats().await.accepted == 1 },
    )
    .await;
    assert_sent_then_received(&world, order).await;
    // The partner, never told, sends the same report again with a fresh token.
    let mut client = ingest.client.clone();
    let again = client
        .report_status(request(&received, token_for(&acme, &received, world.now())))
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    let stats = ingest.stats().await;
    assert_eq!((stats.accepted, stats.duplicates), (1, 1));
    assert_sent_then_received(&world, order).await;
    ingest.stop().await;
}
