//! The relay when its database host stops answering (Postgres, through a proxy that stalls the
//! connections it has while forwarding new ones, as a failover path would): a leased batch
//! whose bookkeeping meets the silence is given up when its lease ends, the loop is told the
//! database is unavailable, and the next lease (once the server has ended the stalled
//! transaction, after the lease's length idle) sends the order on a fresh connection — instead
//! of one relay loop waiting on a statement that never returns until the kernel gives up on the
//! socket.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Harness;
use tokio_util::sync::CancellationToken;
use waybill_dispatcher::{error::DispatchError, relay::Relay, store::for_database};
use waybill_proto::v1::DispatchState;
use waybill_service_kit::db::Database;
use waybill_test_kit::{TestBackend, TestDatabase};

/// The lease of the relay under test: long enough for a produce on the test broker, short
/// enough for the test.
const LEASE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_database_goes_silent_is_given_up_when_its_lease_ends() {
    let harness = Harness::new(TestBackend::Postgres).await;
    harness
        .partner("acme", "DE", chrono::Duration::minutes(10), 3)
        .await;
    let order = harness.place("DE", 5_000).await;

    let (proxy, url) = harness.test_db.behind_proxy();
    let settings = TestDatabase::quick_pool_settings();
    let db = Database::connect(&url, &settings, CancellationToken::new())
        .await
        .unwrap();
    let settings = waybill_dispatcher::RelaySettings {
        lease: LEASE,
        ..harness.settings("stalled")
    };
    let relay: Relay = harness.relay_over(
        for_database(&db),
        std::sync::Arc::new(harness.clock.clone()),
        settings,
    );

    let batch = relay.lease_due().await.unwrap();
    assert_eq!(batch.orders().len(), 1);
    proxy.stall();
    let started = std::time::Instant::now();
    let given_up = tokio::time::timeout(Duration::from_secs(15), relay.relay_batch(batch))
        .await
        .expect("the batch was given up within 15 s");
    let waited = started.elapsed();
    assert!(
        matches!(&given_up, Err(error @ DispatchError::Store(_))
            if error.is_retryable() && error.to_string().contains("did not finish within")),
        "{given_up:?}"
    );
    assert!(waited <= LEASE + Duration::from_secs(1), "{waited:?}");
    assert_eq!(
        harness.dispatch(order).await.state,
        DispatchState::Pending,
        "nothing of the stalled bookkeeping was written"
    );

    // The server ends the stalled transaction after the lease's length idle; a lease on a
    // fresh connection then takes the order and its bookkeeping lands.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let batch = relay.lease_due().await.unwrap();
        if !batch.orders().is_empty() {
            assert_eq!(relay.relay_batch(batch).await.unwrap(), 1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the order was not leased again within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(harness.dispatch(order).await.state, DispatchState::Sent);
    proxy.resume();
    db.close().await;
}
