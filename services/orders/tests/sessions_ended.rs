//! The Orders service when Postgres ends its sessions under it (a restart, an operator's
//! `pg_terminate_backend`, an idle-session timeout): a call answers or says `UNAVAILABLE`
//! (retry later), never `INTERNAL`, and calls work again without a restart of the service.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use sqlx::Connection;
use support::fixture;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};
use uuid::Uuid;
use waybill_orders::{OrdersDeps, serve};
use waybill_proto::v1::{self as pb, order_service_client::OrderServiceClient};
use waybill_service_kit::grpc::ServerLimits;
use waybill_test_kit::{TestBackend, eventually};

/// `GetOrder` of an unknown order: a full round trip to the database that answers `NOT_FOUND`.
async fn look_up(client: &OrderServiceClient<Channel>) -> Result<(), tonic::Status> {
    let mut client = client.clone();
    match client
        .get_order(pb::GetOrderRequest {
            order_id: Uuid::now_v7().to_string(),
        })
        .await
    {
        Err(status) if status.code() == Code::NotFound => Ok(()),
        Err(status) => Err(status),
        Ok(_) => panic!("an order that was never placed was found"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_ended_by_the_server_make_calls_unavailable_at_worst_then_they_work_again() {
    let f = fixture(TestBackend::Postgres).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(serve(
        listener,
        OrdersDeps::new(&f.db, "test"),
        ServerLimits::default(),
        shutdown,
    ));
    let client = OrderServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    for round in 0..3 {
        // Calls at once, so the pool holds several connections, idle a moment later.
        let calls: Vec<_> = (0..8).map(|_| look_up(&client)).collect();
        for result in futures::future::join_all(calls).await {
            result.unwrap();
        }

        // The server ends every session of this database but the one asking.
        let mut operator = sqlx::PgConnection::connect(&f.test_db.url).await.unwrap();
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut operator)
        .await
        .unwrap();
        assert!(!ended.is_empty(), "round {round}: no session to end");
        operator.close().await.unwrap();

        // Right away, on connections idle for far less than the pool's ping threshold: each
        // call answers or asks to be retried.
        let calls: Vec<_> = (0..8).map(|_| look_up(&client)).collect();
        let mut unavailable = 0;
        for result in futures::future::join_all(calls).await {
            match result {
                Ok(()) => {}
                Err(status) if status.code() == Code::Unavailable => unavailable += 1,
                Err(status) => panic!("round {round}: {status:?}"),
            }
        }
        eprintln!("round {round}: {unavailable} of 8 calls unavailable");

        // The pool drops what broke and connects again: calls work.
        eventually(Duration::from_secs(10), "calls work again", || async {
            look_up(&client).await.is_ok()
        })
        .await;
    }
}
