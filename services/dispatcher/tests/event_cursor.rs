//! Publishing history events on Postgres by a cursor over transaction ids (migration 0006):
//! an event committed while an older transaction still runs waits for it and is never skipped,
//! one dispatcher publishes at a time, events already marked published are walked past, and
//! events written before the migration are still claimed and marked one by one.
#![allow(clippy::unwrap_used)]

mod common;

use common::Harness;
use sqlx::PgPool;
use uuid::Uuid;
use waybill_dispatcher::store::EventBatch;
use waybill_service_kit::db::Backend;
use waybill_test_kit::TestBackend;

fn keys(batch: &dyn EventBatch) -> Vec<(Uuid, i64)> {
    batch.events().iter().map(|e| (e.order_id, e.seq)).collect()
}

fn pool(h: &Harness) -> PgPool {
    match h.db.backend() {
        Backend::Postgres(pool) => pool.clone(),
        Backend::Sqlite(_) => unreachable!("a Postgres harness"),
    }
}

/// Publishes everything waiting, so a test starts from an empty backlog.
async fn publish_all(h: &Harness) {
    let batch = h.claim_events(1_000).await;
    batch.mark_published(h.clock_now()).await.unwrap();
}

#[tokio::test]
async fn an_event_committed_while_an_older_transaction_runs_waits_for_it_and_is_never_skipped() {
    let h = Harness::new(TestBackend::Postgres).await;
    let pool = pool(&h);
    let early = h.place("DE", 100).await;
    publish_all(&h).await;

    // An older transaction holds its id, then a newer one commits an event.
    let mut older = waybill_service_kit::db::begin(&pool).await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *older)
        .await
        .unwrap();
    let newer = h.place("DE", 200).await;
    let batch = h.store.claim_events(10).await.unwrap();
    assert_eq!(keys(&*batch), [], "held back behind the older transaction");
    assert!(
        batch.more_waiting(),
        "and says so, so the publisher looks again soon"
    );
    batch.mark_published(h.clock_now()).await.unwrap();

    // The older transaction writes an event of its own and commits: it comes first (it has the
    // smaller id), and the newer event is not lost behind the cursor.
    sqlx::query(
        "INSERT INTO order_status_events (order_id, seq, status, partner_id, occurred_at, \
         recorded_at) VALUES ($1, 2, 'SHIPPED', 'acme', now(), now())",
    )
    .bind(early)
    .execute(&mut *older)
    .await
    .unwrap();
    older.commit().await.unwrap();
    let batch = h.claim_events(10).await;
    assert_eq!(keys(&*batch), [(early, 2), (newer, 1)]);
    assert!(!batch.more_waiting());
    batch.mark_published(h.clock_now()).await.unwrap();
    assert_eq!(keys(&*h.claim_events(10).await), []);
}

#[tokio::test]
async fn one_dispatcher_publishes_at_a_time_and_a_release_offers_the_events_again() {
    let h = Harness::new(TestBackend::Postgres).await;
    let order = h.place("DE", 100).await;
    let first = h.claim_events(10).await;
    assert_eq!(keys(&*first), [(order, 1)]);
    let second = h.claim_events(10).await;
    assert_eq!(keys(&*second), [], "the cursor is taken: no second copy");
    second.release().await.unwrap();
    first.release().await.unwrap();
    let again = h.claim_events(10).await;
    assert_eq!(keys(&*again), [(order, 1)]);
    again.mark_published(h.clock_now()).await.unwrap();
    assert_eq!(keys(&*h.claim_events(10).await), []);
}

#[tokio::test]
async fn events_marked_published_are_walked_past_and_events_from_before_0006_are_still_published() {
    let h = Harness::new(TestBackend::Postgres).await;
    let pool = pool(&h);
    let marked = h.place("DE", 100).await;
    let legacy = h.place("DE", 200).await;
    let fresh = h.place("DE", 300).await;
    sqlx::query("UPDATE order_status_events SET published_at = now() WHERE order_id = $1")
        .bind(marked)
        .execute(&pool)
        .await
        .unwrap();
    // As written before migration 0006: no transaction id.
    sqlx::query("UPDATE order_status_events SET xid = NULL WHERE order_id = $1")
        .bind(legacy)
        .execute(&pool)
        .await
        .unwrap();
    let batch = h.claim_events(10).await;
    assert_eq!(keys(&*batch), [(legacy, 1), (fresh, 1)]);
    batch.mark_published(h.clock_now()).await.unwrap();
    assert_eq!(keys(&*h.claim_events(10).await), []);
    let legacy_published: bool = sqlx::query_scalar(
        "SELECT published_at IS NOT NULL FROM order_status_events WHERE order_id = $1",
    )
    .bind(legacy)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(legacy_published);
}

#[tokio::test]
async fn later_walks_of_one_claim_see_events_committed_since_and_publish_what_was_kept() {
    let h = Harness::new(TestBackend::Postgres).await;
    publish_all(&h).await;
    let first = h.place("DE", 100).await;
    let second = h.place("DE", 200).await;
    let third = h.place("DE", 300).await;

    let mut batch = h.claim_events(1).await;
    assert_eq!(keys(&*batch), [(first, 1)]);
    let (walked, walks) = eventually_walked(&mut *batch, 1, 1).await;
    assert_eq!(walked, [second]);
    // Committed after the claim's transaction took the cursor's lock (and an id of its own):
    // a later walk of the same claim still reaches it, the claim's own id holds nothing back.
    let fourth = h.place("DE", 400).await;
    assert_eq!(
        eventually_walked(&mut *batch, 2, 10).await.0,
        [third, fourth]
    );
    assert!(
        h.store.claim_events(10).await.unwrap().events().is_empty(),
        "the cursor stays taken for the whole claim: no second copy"
    );

    // The last walks were not produced: the cursor moves past the claim's and `second` only.
    batch.keep_walks(walks);
    batch.mark_published(h.clock_now()).await.unwrap();
    let again = h.claim_events(10).await;
    assert_eq!(keys(&*again), [(third, 1), (fourth, 1)]);
    again.mark_published(h.clock_now()).await.unwrap();
    assert_eq!(keys(&*h.claim_events(10).await), []);
}

/// Walks `limit` at a time until `count` events came back (another test's transaction on the
/// same server may hold them back for a moment); their orders, and how many walks it took.
async fn eventually_walked(
    batch: &mut dyn EventBatch,
    count: usize,
    limit: u32,
) -> (Vec<Uuid>, usize) {
    let mut walked = Vec::new();
    for walks in 1..=1_000 {
        walked.extend(
            batch
                .walk_more(limit)
                .await
                .unwrap()
                .iter()
                .map(|e| e.order_id),
        );
        if walked.len() >= count {
            return (walked, walks);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("walked {walked:?}, not {count} events, in 10 s");
}
