//! The whole Waybill system started in-process for tests, through one builder:
//!
//! ```no_run
//! # async fn demo() {
//! use waybill_integration_tests::TestStack;
//! use waybill_service_kit::testing::TestBackend;
//! let stack = TestStack::builder().backend(TestBackend::Postgres).start().await;
//! let mut orders = stack.orders_client().await;
//! # }
//! ```
//!
//! Every service binds port 0 on loopback and runs against a throw-away database, so tests run
//! in parallel. Dropping the stack shuts the services down and drops the database.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use waybill_orders::OrdersDeps;
use waybill_proto::v1::order_service_client::OrderServiceClient;
use waybill_service_kit::{
    db::Database,
    grpc::ServerLimits,
    testing::{TestBackend, TestDatabase},
};

/// Configures a [`TestStack`].
#[derive(Debug)]
pub struct TestStackBuilder {
    backend: TestBackend,
    seed_catalog: bool,
}

impl TestStackBuilder {
    /// Which database backend the services share (default Postgres).
    pub fn backend(mut self, backend: TestBackend) -> Self {
        self.backend = backend;
        self
    }

    /// Whether to load the sample catalog (default yes).
    pub fn seed_catalog(mut self, seed: bool) -> Self {
        self.seed_catalog = seed;
        self
    }

    /// Creates the database and starts the services.
    pub async fn start(self) -> TestStack {
        let test_db = TestDatabase::create(self.backend).await;
        let db = test_db.connect().await;
        if self.seed_catalog {
            waybill_orders::store::seed_catalog(&db).await.unwrap();
        }
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let orders_addr = listener.local_addr().unwrap();
        tokio::spawn(waybill_orders::serve(
            listener,
            OrdersDeps::new(&db, "test"),
            ServerLimits::default(),
            shutdown.clone(),
        ));
        TestStack {
            orders_addr,
            db,
            shutdown,
            _test_db: test_db,
        }
    }
}

/// A running system.
#[derive(Debug)]
pub struct TestStack {
    /// Where Orders listens.
    pub orders_addr: SocketAddr,
    /// The shared database.
    pub db: Database,
    shutdown: CancellationToken,
    // Last: dropped after the services stop.
    _test_db: TestDatabase,
}

impl TestStack {
    /// A builder with defaults: Postgres, sample catalog.
    pub fn builder() -> TestStackBuilder {
        TestStackBuilder {
            backend: TestBackend::Postgres,
            seed_catalog: true,
        }
    }

    /// A client of the Orders service.
    pub async fn orders_client(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::connect(format!("http://{}", self.orders_addr))
            .await
            .unwrap()
    }
}

impl Drop for TestStack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
