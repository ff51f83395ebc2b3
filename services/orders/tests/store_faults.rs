//! The placing writer when its connection's host stops answering (Postgres, through a proxy
//! that stalls the connections it has while forwarding new ones, as a failover path would): the
//! statement is given up after the write limit, its caller is told to try again, and the
//! placings after it go through on a fresh connection instead of queueing behind a statement
//! that never returns.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{at, new_order};
use tokio_util::sync::CancellationToken;
use waybill_orders::store::{OrderStore, Placement, SqlOrderStore, StoreError};
use waybill_service_kit::db::Database;
use waybill_test_kit::{TestBackend, TestDatabase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placing_on_a_silent_connection_is_given_up_and_the_next_ones_go_through() {
    let database = TestDatabase::create(TestBackend::Postgres).await;
    let (proxy, url) = database.behind_proxy();
    let settings = TestDatabase::quick_pool_settings();
    let db = Database::connect(&url, &settings, CancellationToken::new())
        .await
        .unwrap();
    waybill_orders::store::seed_catalog(&db).await.unwrap();
    let store = SqlOrderStore::new(&db).with_write_limit(Duration::from_millis(300));
    let placed = store.place_order(&new_order("before", "c1", at(0))).await;
    assert!(matches!(placed, Ok(Placement::Created(_))), "{placed:?}");

    proxy.stall();
    let started = std::time::Instant::now();
    let given_up = tokio::time::timeout(
        Duration::from_secs(5),
        store.place_order(&new_order("stalled", "c1", at(1))),
    )
    .await
    .expect("the stalled placing was answered within 5 s");
    assert!(
        matches!(&given_up, Err(StoreError::Unavailable(error)) if error.to_string().contains("did not finish")),
        "{given_up:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // The next placing is not stuck behind the silent connection: the pool's guard replaced it
    // (the proxy forwards new connections), and the writer goes on.
    let after = tokio::time::timeout(
        Duration::from_secs(10),
        store.place_order(&new_order("after", "c1", at(2))),
    )
    .await
    .expect("a placing after the stall went through within 10 s");
    assert!(matches!(after, Ok(Placement::Created(_))), "{after:?}");
    proxy.resume();
    db.close().await;
}
