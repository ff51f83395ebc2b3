//! The group commit, on both backends: what one batch does with each of its reports
//! (`SqlIngestStore::record_batch`, composed by hand), a report that fails without failing its
//! batch, a commit that fails and answers every caller unavailable with nothing recorded, and
//! many concurrent reports on one order (batched as they come) keeping first-answer-wins and the
//! replay guard. Failures are the database's own, set up by the test in its own database: a
//! trigger that refuses one report's event, a deferred check that makes `COMMIT` itself fail.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use chrono::Duration;
use common::{
    World,
    service::{Service, report, request, world},
    start, token_for,
};
use tonic::Code;
use uuid::Uuid;
use waybill_proto::v1::OrderStatus;
use waybill_status_ingest::{
    domain::decision::status_after,
    store::{AuthenticatedReport, InBatch, ReportOutcome, SqlIngestStore, StoreError},
};
use waybill_test_kit::{TestBackend, on_both_backends};

on_both_backends!(
    one_batch_answers_each_report_as_if_alone,
    a_report_that_fails_is_rolled_back_alone,
    a_failed_commit_answers_every_report_unavailable_and_records_nothing,
    concurrent_reports_on_one_order_keep_first_answer_wins_and_the_replay_guard,
    recorded_at_is_the_writers_time,
);

/// A report of acme (key `k1`) with a fresh token id.
fn authenticated(order: Uuid, report_id: &str, status: OrderStatus) -> AuthenticatedReport {
    AuthenticatedReport {
        order_id: order,
        partner_id: "acme".to_owned(),
        report_id: report_id.to_owned(),
        status,
        tracking_id: String::new(),
        detail: String::new(),
        detail_code: String::new(),
        action_required: false,
        occurred_at: start() - Duration::minutes(5),
        token_id: Uuid::new_v4().to_string(),
        token_id_kept_until: start() + Duration::minutes(3),
        key_id: "k1".to_owned(),
    }
}

/// A store over `world`'s database written to directly, batch by batch.
fn batches(world: &World) -> SqlIngestStore {
    SqlIngestStore::new(&world.db, Arc::new(world.clock.clone()))
}

fn outcome(result: &InBatch) -> &ReportOutcome {
    match result {
        InBatch::Decided(outcome) => outcome,
        other => panic!("not decided: {other:?}"),
    }
}

async fn one_batch_answers_each_report_as_if_alone(backend: TestBackend) {
    let (world, a, _) = world(backend).await;
    let (b, c, d) = (
        world.order().await,
        world.order().await,
        world.order().await,
    );
    world.route(b, "acme").await;
    world.route(c, "globex").await;
    world.route(d, "acme").await;
    let first = authenticated(a, "r-1", OrderStatus::ReceivedByPartner);
    let batch = [
        first.clone(),
        // The same order again: after the first, seeing what it did.
        authenticated(a, "r-2", OrderStatus::Shipped),
        // The first's report id, on another order.
        authenticated(b, "r-1", OrderStatus::Shipped),
        // Another partner's order.
        authenticated(c, "r-3", OrderStatus::Shipped),
        // The first's token again.
        AuthenticatedReport {
            report_id: "r-4".to_owned(),
            ..first.clone()
        },
        // The first, retried with a fresh token.
        authenticated(a, "r-1", OrderStatus::ReceivedByPartner),
        // A key that is not enrolled (the service verified with one it remembered).
        AuthenticatedReport {
            key_id: "k-gone".to_owned(),
            ..authenticated(d, "r-5", OrderStatus::Shipped)
        },
        // No such order.
        authenticated(Uuid::now_v7(), "r-6", OrderStatus::Shipped),
    ];
    let results = batches(&world).record_batch(&batch).await.unwrap();
    let outcomes: Vec<_> = results.iter().map(outcome).cloned().collect();
    assert!(matches!(
        outcomes[0],
        ReportOutcome::Accepted { sequence: 3, .. }
    ));
    assert!(matches!(
        outcomes[1],
        ReportOutcome::Accepted { sequence: 4, .. }
    ));
    assert_eq!(
        outcomes[2..],
        [
            ReportOutcome::ReportIdReused,
            ReportOutcome::NotRouted,
            ReportOutcome::Replayed,
            ReportOutcome::Duplicate,
            ReportOutcome::KeyRevoked(None),
            ReportOutcome::NotRouted,
        ]
    );
    let history: Vec<_> = world
        .history(a)
        .await
        .into_iter()
        .skip(2)
        .map(|e| (e.seq, e.status, e.report_id))
        .collect();
    assert_eq!(
        history,
        [
            (3, "RECEIVED_BY_PARTNER".to_owned(), Some("r-1".to_owned())),
            (4, "SHIPPED".to_owned(), Some("r-2".to_owned())),
        ]
    );
    assert_eq!(world.order_row(a).await.status, "SHIPPED");
    assert_eq!(world.dispatch_row(a).await.state, "ACKNOWLEDGED");
    for untouched in [b, c, d] {
        assert_eq!(world.history(untouched).await.len(), 2);
    }
    // Kept: the two accepted reports' token ids and the duplicate's.
    assert_eq!(world.token_ids().await, 3);
}

async fn a_report_that_fails_is_rolled_back_alone(backend: TestBackend) {
    let (world, a, _) = world(backend).await;
    let (b, c) = (world.order().await, world.order().await);
    world.route(b, "acme").await;
    world.route(c, "acme").await;
    world
        .execute(
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.report_id = 'poison' THEN RAISE EXCEPTION 'poisoned report'; END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER poison BEFORE INSERT ON order_status_events \
             FOR EACH ROW EXECUTE FUNCTION poison();",
            "CREATE TRIGGER poison BEFORE INSERT ON order_status_events \
             WHEN NEW.report_id = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned report'); END;",
        )
        .await;
    let batch = [
        authenticated(a, "r-1", OrderStatus::Shipped),
        authenticated(b, "poison", OrderStatus::Shipped),
        authenticated(c, "r-3", OrderStatus::Shipped),
    ];
    let before = world.state_of(b).await;
    let results = batches(&world).record_batch(&batch).await.unwrap();
    assert!(matches!(
        outcome(&results[0]),
        ReportOutcome::Accepted { .. }
    ));
    assert!(
        matches!(&results[1], InBatch::Failed(StoreError::Database(_))),
        "{:?}",
        results[1]
    );
    assert!(matches!(
        outcome(&results[2]),
        ReportOutcome::Accepted { .. }
    ));
    // Nothing of the failed report, its token id included; the others committed.
    let after = world.state_of(b).await;
    assert_eq!((after.0, after.1, after.2), (before.0, before.1, before.2));
    for order in [a, c] {
        assert_eq!(world.history(order).await.len(), 3);
    }
    assert_eq!(world.token_ids().await, 2);
}

/// A deferred check that refuses every commit that wrote a history event.
async fn refuse_commits(world: &World) {
    world
        .execute(
            "CREATE FUNCTION refuse_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'the test refuses this commit'; END $$; \
             CREATE CONSTRAINT TRIGGER refuse_commit AFTER INSERT ON order_status_events \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_commit();",
            "CREATE TABLE refuse_parent (id TEXT PRIMARY KEY); \
             CREATE TABLE refuse_child (parent TEXT REFERENCES refuse_parent (id) \
                                        DEFERRABLE INITIALLY DEFERRED); \
             CREATE TRIGGER refuse_commit AFTER INSERT ON order_status_events \
             BEGIN INSERT INTO refuse_child VALUES ('missing'); END;",
        )
        .await;
}

async fn a_failed_commit_answers_every_report_unavailable_and_records_nothing(
    backend: TestBackend,
) {
    let (world, a, acme) = world(backend).await;
    let (b, c) = (world.order().await, world.order().await);
    world.route(b, "acme").await;
    world.route(c, "acme").await;
    let orders = [a, b, c];
    let before = futures::future::join_all(orders.map(|order| world.state_of(order))).await;
    refuse_commits(&world).await;

    // One batch: the commit fails, every report with it.
    let batch =
        orders.map(|order| authenticated(order, &format!("r-{order}"), OrderStatus::Shipped));
    let failed = batches(&world).record_batch(&batch).await.unwrap_err();
    assert!(matches!(failed, StoreError::Unavailable(_)), "{failed:?}");

    // Through the service, concurrent calls batched as they come: each answered UNAVAILABLE,
    // none before its batch's commit failed (nothing is recorded, so nothing was answered OK).
    let ingest = Service::start(world.deps()).await;
    let calls = orders.map(|order| {
        let mut client = ingest.client.clone();
        let id = format!("s-{order}");
        let shipped = report(order, "acme", &id, OrderStatus::Shipped, "T1", world.now());
        let call = request(&shipped, token_for(&acme, &shipped, world.now()));
        async move { client.report_status(call).await }
    });
    for answer in futures::future::join_all(calls).await {
        let status = answer.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("retry"), "{}", status.message());
    }
    let after = futures::future::join_all(orders.map(|order| world.state_of(order))).await;
    assert_eq!(after, before, "nothing recorded, no token id kept");

    // Once commits go through again, the retries (fresh tokens) are accepted, not duplicates.
    world
        .execute(
            "DROP TRIGGER refuse_commit ON order_status_events",
            "DROP TRIGGER refuse_commit",
        )
        .await;
    for order in orders {
        let id = format!("s-{order}");
        let shipped = report(order, "acme", &id, OrderStatus::Shipped, "T1", world.now());
        let answer = ingest
            .client
            .clone()
            .report_status(request(&shipped, token_for(&acme, &shipped, world.now())))
            .await
            .unwrap()
            .into_inner();
        assert!(!answer.duplicate);
    }
    ingest.stop().await;
}

async fn concurrent_reports_on_one_order_keep_first_answer_wins_and_the_replay_guard(
    backend: TestBackend,
) {
    let (world, order, _) = world(backend).await;
    let statuses = [
        OrderStatus::ReceivedByPartner,
        OrderStatus::Shipped,
        OrderStatus::Exception,
    ];
    // Eight report ids, each sent three times with fresh tokens; the first copy of four of
    // them sent a second time with its token (a replay).
    let mut calls = Vec::new();
    for n in 0..8 {
        let first = authenticated(order, &format!("r-{n}"), statuses[n % 3]);
        for _ in 0..2 {
            calls.push(AuthenticatedReport {
                token_id: Uuid::new_v4().to_string(),
                ..first.clone()
            });
        }
        if n < 4 {
            calls.push(first.clone());
        }
        calls.push(first);
    }
    let outcomes = futures::future::join_all(calls.into_iter().map(|report| {
        let store = world.store.clone();
        tokio::spawn(async move { (report.report_id.clone(), store.record_report(&report).await) })
    }))
    .await;
    for n in 0..8 {
        let id = format!("r-{n}");
        let of_id: Vec<_> = outcomes
            .iter()
            .map(|joined| joined.as_ref().unwrap())
            .filter(|(report_id, _)| *report_id == id)
            .map(|(_, outcome)| outcome.as_ref().unwrap().clone())
            .collect();
        let count = |f: fn(&ReportOutcome) -> bool| of_id.iter().filter(|o| f(o)).count();
        assert_eq!(
            count(|o| matches!(o, ReportOutcome::Accepted { .. })),
            1,
            "{id}: {of_id:?}"
        );
        assert_eq!(count(|o| *o == ReportOutcome::Duplicate), 2, "{id}");
        assert_eq!(
            count(|o| *o == ReportOutcome::Replayed),
            usize::from(n < 4),
            "{id}"
        );
    }
    // One event per report id, numbered without gaps; the order's status is what the state
    // machine makes of them in that order; every fresh token id is spent, once.
    let history = world.history(order).await;
    let reported = &history[2..];
    assert_eq!(
        reported.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (3..=10).collect::<Vec<_>>()
    );
    let mut ids: Vec<_> = reported.iter().map(|e| e.report_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 8);
    let expected = reported.iter().fold(OrderStatus::Placed, |status, event| {
        status_after(status, OrderStatus::from_short_name(&event.status).unwrap())
    });
    assert_eq!(world.order_row(order).await.status, expected.short_name());
    assert_eq!(world.token_ids().await, 24);
}

async fn recorded_at_is_the_writers_time(backend: TestBackend) {
    let (world, order, _) = world(backend).await;
    let shipped = authenticated(order, "r-1", OrderStatus::Shipped);
    // The report was authenticated at start(); it is written a minute later.
    world.clock.set(start() + Duration::minutes(1));
    world.store.record_report(&shipped).await.unwrap();
    let event = world.history(order).await.pop().unwrap();
    assert_eq!(event.recorded_at, start() + Duration::minutes(1));
    assert_eq!(event.occurred_at, start() - Duration::minutes(5));
}

/// Postgres: a batch never waits for a row lock. A report whose dispatch row a relay batch holds
/// is left out and waits alone; the others of its batch are recorded meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_order_does_not_hold_up_the_others() {
    use sqlx::Connection as _;
    let (world, busy, _) = world(TestBackend::Postgres).await;
    let free = world.order().await;
    world.route(free, "acme").await;
    // Both orders were placed at start(); their reports are recorded 2 s later.
    world.clock.advance(Duration::seconds(2));
    let two_seconds = Some(std::time::Duration::from_secs(2));
    let mut relay = sqlx::PgConnection::connect(&world.test_db.url)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut relay).await.unwrap();
    sqlx::query("SELECT 1 FROM dispatch WHERE order_id = $1 FOR UPDATE")
        .bind(busy)
        .execute(&mut relay)
        .await
        .unwrap();
    let report_on = |order| {
        let store = world.store.clone();
        let report = authenticated(order, &format!("r-{order}"), OrderStatus::Shipped);
        tokio::spawn(async move { store.record_report(&report).await })
    };
    let (waiting, going) = (report_on(busy), report_on(free));
    let recorded = tokio::time::timeout(std::time::Duration::from_secs(20), going)
        .await
        .expect("the free order's report is not held up")
        .unwrap()
        .unwrap();
    // Recorded with the batch's head: it acknowledged the handover 2 s after the placing.
    assert!(
        matches!(recorded, ReportOutcome::Accepted { placed_to_acknowledged, .. } if placed_to_acknowledged == two_seconds),
        "{recorded:?}"
    );
    assert!(!waiting.is_finished(), "the busy order's report waits");
    sqlx::query("COMMIT").execute(&mut relay).await.unwrap();
    let recorded = tokio::time::timeout(std::time::Duration::from_secs(20), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Recorded alone, waiting for the row: the same answer.
    assert!(
        matches!(recorded, ReportOutcome::Accepted { placed_to_acknowledged, .. } if placed_to_acknowledged == two_seconds),
        "{recorded:?}"
    );
    assert_eq!(world.history(busy).await.len(), 3);
}
