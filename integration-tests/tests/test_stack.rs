//! The test stack is stopped by construction: a test that never calls `stop`, or fails before
//! it, leaves no service running — by the time the stack is dropped every service has
//! finished (the pool they shared is closed, which the stack does only after they have) and
//! every port it listened on refuses connections.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use waybill_integration_tests::TestStack;
use waybill_service_kit::db::{Backend, Database};

/// Every address the stack listens on: Orders, the dispatcher's admin API, StatusIngest, a
/// metrics endpoint.
async fn started() -> (TestStack, Vec<SocketAddr>, Database) {
    let stack = TestStack::builder().status_ingest(true).start().await;
    let metrics = stack.serve_metrics(&stack.orders_metrics).await;
    let addrs = vec![
        stack.orders_addr,
        stack.admin_addr.unwrap(),
        stack.ingest_addr(),
        metrics,
    ];
    for addr in &addrs {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_ok(),
            "{addr} listens"
        );
    }
    let db = stack.db.clone();
    (stack, addrs, db)
}

/// The services have finished: their pool `db` is closed, nothing listens on `addrs`.
async fn assert_stopped(addrs: &[SocketAddr], db: &Database) {
    let closed = match db.backend() {
        Backend::Postgres(pool) => pool.is_closed(),
        Backend::Sqlite(pool) => pool.is_closed(),
    };
    assert!(
        closed,
        "the services' pool is still open after the stack was dropped"
    );
    for addr in addrs {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{addr} still accepts connections after the stack was dropped"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_dropped_without_stop_stops_every_service() {
    let (stack, addrs, db) = started().await;
    drop(stack);
    assert_stopped(&addrs, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_that_fails_before_stop_leaves_nothing_running() {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let failed = tokio::spawn(async move {
        let (_stack, addrs, db) = started().await;
        sender.send((addrs, db)).unwrap();
        panic!("an assertion failed before stop");
    })
    .await;
    assert!(failed.unwrap_err().is_panic());
    let (addrs, db) = receiver.await.unwrap();
    assert_stopped(&addrs, &db).await;
}
