//! Orders bounds the calls it holds over all its connections, not only on each one: with the
//! placings stuck behind a locked table, callers on other connections are refused at once with
//! `RESOURCE_EXHAUSTED` (counted as `overloaded`) while health checks still answer; once the
//! lock goes, the held placings complete and new ones are taken again. Real gRPC on loopback,
//! real Postgres.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::fixture;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use waybill_orders::{OrdersDeps, serve};
use waybill_proto::v1::order_service_client::OrderServiceClient;
use waybill_service_kit::{db::Backend, grpc::ServerLimits};
use waybill_test_kit::{TestBackend, fixtures::sample_order};

async fn client(addr: std::net::SocketAddr) -> OrderServiceClient<Channel> {
    // A connection of its own each: the per-connection limit is not what is tested.
    OrderServiceClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_bound_over_all_connections_orders_refuses_at_once_and_recovers() {
    let f = fixture(TestBackend::Postgres).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let deps = OrdersDeps::new(&f.db, "test");
    let metrics = deps.metrics.clone();
    tokio::spawn(serve(
        listener,
        deps,
        ServerLimits {
            concurrency_total: 2,
            ..ServerLimits::default()
        },
        shutdown.clone(),
    ));

    // Every placing waits for the lock on `orders`.
    let Backend::Postgres(pool) = f.db.backend() else {
        panic!("a Postgres fixture")
    };
    let mut lock = pool.acquire().await.unwrap();
    sqlx::query("BEGIN").execute(&mut *lock).await.unwrap();
    sqlx::query("LOCK TABLE orders IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();

    let mut held = Vec::new();
    for n in 0..2 {
        let mut client = client(addr).await;
        held.push(tokio::spawn(async move {
            client
                .place_order(sample_order(&format!("held-{n}"), "US"))
                .await
                .map(|_| ())
        }));
    }

    // A third caller, on a connection of its own, is refused once both are held (until then
    // it may be taken and wait too: it gives up after a moment and asks again).
    let mut third = client(addr).await;
    let mut refused = None;
    for attempt in 0..100 {
        let mut call = tonic::Request::new(sample_order(&format!("third-{attempt}"), "US"));
        call.set_timeout(Duration::from_millis(200));
        match third.place_order(call).await {
            Err(status) if status.code() == Code::ResourceExhausted => {
                refused = Some(status);
                break;
            }
            Err(status) if status.code() == Code::DeadlineExceeded => {}
            other => panic!("a placing went through a locked table: {other:?}"),
        }
    }
    let refused = refused.expect("never refused past the bound");
    assert!(
        refused
            .message()
            .contains("bound of 2 calls in flight over all connections"),
        "{refused:?}"
    );
    let health = HealthClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
    .check(HealthCheckRequest::default())
    .await;
    assert!(health.is_ok(), "a busy server is still alive: {health:?}");
    let text = metrics.render().await.unwrap();
    let overloaded = text
        .lines()
        .find_map(|line| {
            line.strip_prefix(r#"waybill_orders_grpc_server_refused_total{reason="overloaded"}"#)?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_default();
    assert!(overloaded >= 1.0, "{text}");

    // The lock goes: the held placings complete, and the door is open again.
    sqlx::query("COMMIT").execute(&mut *lock).await.unwrap();
    for call in held {
        call.await.unwrap().unwrap();
    }
    third
        .place_order(sample_order("after", "US"))
        .await
        .unwrap();
    shutdown.cancel();
}
