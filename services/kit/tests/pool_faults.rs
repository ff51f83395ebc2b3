//! The Postgres pool under two faults, each through a proxy between the pool and the server:
//! a host that stops answering with connections open (the pool must not strand its places in
//! a ping that never returns), and a caller cancelled while its `BEGIN` is on the wire (the
//! session must not go back to the pool inside a transaction).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{str::FromStr, time::Duration};

use sqlx::{
    Connection, PgConnection,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_util::sync::CancellationToken;
use waybill_service_kit::db::{Backend, Database};
use waybill_test_kit::{TestBackend, TestDatabase, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_of_a_host_that_stops_answering_are_replaced() {
    let database = TestDatabase::create(TestBackend::Postgres).await;
    let (proxy, url) = database.behind_proxy();
    // Three places: the notification listener keeps one.
    let settings = TestDatabase::quick_pool_settings();
    let db = Database::connect(&url, &settings, CancellationToken::new())
        .await
        .unwrap();
    let Backend::Postgres(pool) = db.backend().clone() else {
        unreachable!("postgres")
    };
    // Every place of the pool holds a connection through the proxy.
    let (mut first, mut second) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
    proxy.stall();
    // Callers give up on statements the host never answers (as a gRPC deadline would).
    for conn in [&mut first, &mut second] {
        let gave_up = tokio::time::timeout(
            Duration::from_millis(200),
            sqlx::query("SELECT 1").execute(&mut **conn),
        )
        .await;
        assert!(gave_up.is_err(), "the stalled host answered");
    }
    drop((first, second));
    // The released connections do not answer their ping: after answer_timeout each is replaced
    // in its place by a new connection (the proxy forwards new ones, as a failover path
    // would). Without the bound, both pings wait for the stalled host (the TLS close too) and
    // every acquire times out.
    let started = std::time::Instant::now();
    let value: i32 = tokio::time::timeout(Duration::from_secs(10), async {
        sqlx::query_scalar("SELECT 7").fetch_one(&pool).await
    })
    .await
    .expect("a pool place came free within 10 s")
    .unwrap();
    assert_eq!(value, 7);
    assert!(started.elapsed() < Duration::from_secs(10));
    proxy.resume();
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cancelled_during_begin_leaves_no_transaction_behind() {
    let database = TestDatabase::create(TestBackend::Postgres).await;
    let (proxy, url) = database.behind_proxy();
    let application = format!("waybill-begin-{}", uuid::Uuid::new_v4().simple());
    let options = PgConnectOptions::from_str(&url)
        .unwrap()
        .application_name(&application);
    // One connection, so the next caller gets the same session; handed out without a ping, so
    // that the BEGIN is what waits on the stalled host.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .unwrap();
    sqlx::query("SELECT 1").execute(&pool).await.unwrap();
    idle(&pool).await;

    proxy.stall();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(200),
        waybill_service_kit::db::begin(&pool),
    )
    .await;
    assert!(
        cancelled.is_err(),
        "BEGIN was answered through a stalled proxy"
    );
    proxy.resume();

    // Once the held BEGIN has run and the connection is back in the pool, its session must be
    // idle, not inside a transaction (with Pool::begin it stays "idle in transaction" and the
    // next caller's statements run inside it).
    let mut observer = PgConnection::connect(&database.url).await.unwrap();
    idle(&pool).await;
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE application_name = $1")
            .bind(&application)
            .fetch_optional(&mut observer)
            .await
            .unwrap()
            .flatten();
    assert_eq!(state.as_deref(), Some("idle"));
    pool.close().await;
}

/// Waits until the pool's one connection is back, its release ping answered.
async fn idle(pool: &sqlx::PgPool) {
    eventually(
        Duration::from_secs(10),
        "the connection is back in the pool",
        || {
            let pool = pool.clone();
            async move { pool.num_idle() == 1 }
        },
    )
    .await;
}
