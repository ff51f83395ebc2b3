//! The whole Waybill system started in-process for tests, through one builder:
//!
//! ```no_run
//! # async fn demo() {
//! use waybill_integration_tests::TestStack;
//! use waybill_test_kit::TestBackend;
//! let stack = TestStack::builder().backend(TestBackend::Postgres).start().await;
//! let mut orders = stack.orders_client().await;
//! let mut admin = stack.admin_client().await;
//! # }
//! ```
//!
//! The services are started by [`Stack`] (crate `waybill-stack`), the assembly `waybill dev`
//! runs. Orders and the dispatcher bind port 0 on loopback and share a throw-away database; the
//! dispatcher produces to a test broker (`WAYBILL_TEST_BROKER=mock|tansu`, see
//! `waybill_test_kit::broker`) under topic names unique to the stack, so tests run in
//! parallel.
//!
//! A stack is stopped by construction: dropping it (at the end of a test, or while a failed
//! assertion unwinds) stops every service and waits for each as [`TestStack::stop`] does,
//! before the database is dropped, so no test has to remember `stop` and none leaves a
//! service running. `stop` remains for a test that wants the stop awaited where it says so.
//!
//! With `.status_ingest(true)` a StatusIngest runs too (audience [`AUDIENCE`]) and the
//! dispatcher stamps its address as every order's reply-to, so a connector built on the SDK
//! can report back; [`TestStack::stop_status_ingest`] / [`TestStack::start_status_ingest`] take
//! it down and bring it back on the same address.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::{net::SocketAddr, time::Duration};

use tonic::transport::Channel;
use waybill_dispatcher::{RelaySettings, kafka::TopicNames};
use waybill_proto::v1::{
    self as pb, dispatch_admin_client::DispatchAdminClient,
    order_service_client::OrderServiceClient,
};
use waybill_service_kit::{db::Database, metrics::Metrics, security::ReloadableTls};
use waybill_stack::{
    Broker, DispatcherSettings, IngestSettings, Stack, StackMetrics, StackSettings,
};
use waybill_test_kit::{
    TestBackend, TestDatabase,
    broker::TestBroker,
    eventually,
    fixtures::{self, sample_partner, sample_route},
    tls::TestPki,
};

/// Configures a [`TestStack`].
#[derive(Debug)]
pub struct TestStackBuilder {
    backend: TestBackend,
    seed_catalog: bool,
    dispatcher: bool,
    poll_interval: Duration,
    status_ingest: bool,
    status_ingest_tls: bool,
    broker_tls: bool,
}

/// The audience the test StatusIngest accepts in report tokens.
pub const AUDIENCE: &str = "waybill-test";

impl TestStackBuilder {
    /// Whether to run StatusIngest, the dispatcher's reply-to (default no).
    pub fn status_ingest(mut self, run: bool) -> Self {
        self.status_ingest = run;
        self
    }

    /// Serve StatusIngest over TLS with a test PKI ([`TestStack::ingest_pki`]); the reply-to
    /// is then `https://127.0.0.1:PORT`.
    pub fn status_ingest_tls(mut self, tls: bool) -> Self {
        self.status_ingest_tls = tls;
        self
    }

    /// Run the dispatcher against a Tansu broker reached only over TLS
    /// ([`TestBroker::tansu_tls`]) instead of the broker `WAYBILL_TEST_BROKER` names; clients
    /// of the stack's broker need its [`TestBroker::client_options`].
    pub fn broker_over_tls(mut self, tls: bool) -> Self {
        self.broker_tls = tls;
        self
    }

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

    /// Whether to run a dispatcher and a test broker (default yes).
    pub fn dispatcher(mut self, run: bool) -> Self {
        self.dispatcher = run;
        self
    }

    /// The dispatcher's fallback poll interval (default 30 s, so that a test passing quickly
    /// proves the relay was woken by a notification, not by the poll).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Creates the database and starts the services.
    pub async fn start(self) -> TestStack {
        let test_db = TestDatabase::create(self.backend).await;
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let metrics = StackMetrics::separate();
        let mut settings = StackSettings {
            seed_catalog: self.seed_catalog,
            region: "test".to_owned(),
            metrics: metrics.clone(),
            ..StackSettings::new(test_db.url.clone(), loopback)
        };

        let ingest_pki = self.status_ingest_tls.then(TestPki::new);
        if self.status_ingest || self.status_ingest_tls {
            settings.status_ingest = Some(IngestSettings {
                tls: ingest_pki
                    .as_ref()
                    .map(|pki| ReloadableTls::load(pki.server_files(false)).unwrap()),
                ..IngestSettings::new(loopback, AUDIENCE)
            });
        }

        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let topics = TopicNames {
            partner_prefix: format!("s{}.partner.", &suffix[..10]),
            audit: format!("s{}.audit", &suffix[..10]),
            order_events: format!("s{}.events", &suffix[..10]),
        };
        let broker = if self.dispatcher {
            let broker = if self.broker_tls {
                TestBroker::tansu_tls()
            } else {
                TestBroker::start()
            };
            broker.create_topic(&topics.audit, 1).await;
            broker.create_topic(&topics.order_events, 1).await;
            let kafka = Broker::Kafka {
                settings: broker.kafka_settings(Duration::from_secs(5)),
                topic_creator: Some(broker.topic_creator()),
            };
            settings.dispatcher = Some(DispatcherSettings {
                relay: RelaySettings {
                    topics: topics.clone(),
                    // StatusIngest's address instead, when the stack runs one.
                    reply_to: "http://127.0.0.1:50053".to_owned(),
                    poll_interval: self.poll_interval,
                    ..RelaySettings::default()
                },
                ..DispatcherSettings::new(loopback, kafka)
            });
            Some(broker)
        } else {
            None
        };

        let stack = Stack::start(settings).await.unwrap();
        TestStack {
            orders_addr: stack.orders_addr,
            admin_addr: stack.dispatcher_addr,
            orders_metrics: metrics.orders,
            dispatcher_metrics: metrics.dispatcher,
            ingest_metrics: metrics.status_ingest,
            ingest_pki,
            topics,
            db: stack.database().clone(),
            stack,
            broker,
            _test_db: test_db,
        }
    }
}

/// A running system: a [`Stack`] on a throw-away database and a test broker.
#[derive(Debug)]
pub struct TestStack {
    /// The services: dropped first, which stops them and closes the pool (see [`Stack`]'s
    /// `Drop`), before the broker and the database go.
    stack: Stack,
    /// Where Orders listens.
    pub orders_addr: SocketAddr,
    /// Where the dispatcher's admin API listens (when a dispatcher runs).
    pub admin_addr: Option<SocketAddr>,
    /// Orders' Prometheus series (serve them with [`TestStack::serve_metrics`]).
    pub orders_metrics: Metrics,
    /// The dispatcher's Prometheus series.
    pub dispatcher_metrics: Metrics,
    /// StatusIngest's Prometheus series (the same counters across a restart).
    pub ingest_metrics: Metrics,
    /// The topic names this stack's dispatcher produces to.
    pub topics: TopicNames,
    /// The shared database.
    pub db: Database,
    /// The PKI StatusIngest's TLS certificate comes from (with `.status_ingest_tls(true)`).
    pub ingest_pki: Option<TestPki>,
    /// The test broker (when a dispatcher runs).
    pub broker: Option<TestBroker>,
    // Last: dropped after the services stop.
    _test_db: TestDatabase,
}

impl TestStack {
    /// A builder with defaults: Postgres, sample catalog, a dispatcher and a test broker.
    pub fn builder() -> TestStackBuilder {
        TestStackBuilder {
            backend: TestBackend::Postgres,
            seed_catalog: true,
            dispatcher: true,
            poll_interval: Duration::from_secs(30),
            status_ingest: false,
            status_ingest_tls: false,
            broker_tls: false,
        }
    }

    /// Serves `metrics` on `GET http://<returned address>/metrics` (loopback, an ephemeral
    /// port) until the stack stops.
    pub async fn serve_metrics(&self, metrics: &Metrics) -> SocketAddr {
        self.stack
            .serve_metrics(metrics, SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap()
    }

    /// Stops every service and waits until each has finished (in-flight requests drained, the
    /// relay's leases released), then closes the pool; the test database is dropped after that.
    /// Dropping the stack does the same ([`Stack`]'s `Drop`); `stop` is the awaited form. A
    /// service that ended with an error is printed with its causes.
    pub async fn stop(self) {
        if let Err(error) = self.stack.stop().await {
            eprintln!("test stack: {}", error.chain());
        }
    }

    /// Where StatusIngest listens (the orders' reply-to), when it runs.
    pub fn ingest_addr(&self) -> SocketAddr {
        self.stack
            .ingest_addr()
            .expect("this stack runs no StatusIngest")
    }

    /// Stops StatusIngest (its port refuses connections until started again).
    pub async fn stop_status_ingest(&self) {
        assert!(
            self.stack.ingest_addr().is_some(),
            "this stack runs no StatusIngest"
        );
        self.stack.stop_status_ingest().await;
    }

    /// Starts StatusIngest again on the same address.
    pub async fn start_status_ingest(&self) {
        self.stack.start_status_ingest().await.unwrap();
    }

    /// Waits (up to 10 s) until the order's dispatch row satisfies `done`, and returns it; fails
    /// the test, naming `what`, otherwise.
    pub async fn dispatch_when(
        &self,
        order_id: &str,
        what: &str,
        done: impl Fn(&pb::Dispatch) -> bool,
    ) -> pb::Dispatch {
        let admin = self.admin_client().await;
        let what = format!("order {order_id}: {what}");
        eventually(Duration::from_secs(10), &what, || {
            let mut admin = admin.clone();
            let done = &done;
            async move {
                let dispatch = admin
                    .get_dispatch(pb::GetDispatchRequest {
                        order_id: order_id.to_owned(),
                    })
                    .await
                    .expect("get dispatch")
                    .into_inner();
                done(&dispatch).then_some(dispatch)
            }
        })
        .await
    }

    /// Enrols an Ed25519 public key (raw 32 bytes) for `partner_id` as `key_id`, through the
    /// admin API.
    pub async fn add_partner_key(&self, partner_id: &str, key_id: &str, public_key: &[u8]) {
        let mut admin = self.admin_client().await;
        fixtures::add_partner_key(&mut admin, partner_id, key_id, public_key).await;
    }

    /// A client of the Orders service.
    pub async fn orders_client(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::connect(format!("http://{}", self.orders_addr))
            .await
            .unwrap()
    }

    /// A client of the dispatcher's admin API.
    pub async fn admin_client(&self) -> DispatchAdminClient<Channel> {
        let addr = self.admin_addr.expect("this stack runs no dispatcher");
        DispatchAdminClient::connect(format!("http://{addr}"))
            .await
            .unwrap()
    }

    /// The broker the dispatcher produces to.
    pub fn broker(&self) -> &TestBroker {
        self.broker.as_ref().expect("this stack runs no dispatcher")
    }

    /// Enrolls `partner_id` (which creates its topic) with one route for `country_code`,
    /// through the admin API as an operator would: the kit's [`sample_partner`] and
    /// [`sample_route`].
    pub async fn enroll_partner(&self, partner_id: &str, country_code: &str) {
        let mut admin = self.admin_client().await;
        let route = sample_route(partner_id, country_code);
        fixtures::enroll(&mut admin, sample_partner(partner_id), route, &[]).await;
    }

    /// Enrolls (or updates) `partner` through the admin API — a [`sample_partner`] with what
    /// the test changes.
    pub async fn enroll(&self, partner: pb::Partner) {
        let mut admin = self.admin_client().await;
        fixtures::enroll_partner(&mut admin, partner).await;
    }

    /// Sets `route` through the admin API — a [`sample_route`] with what the test changes.
    pub async fn set_route(&self, route: pb::Route) {
        let mut admin = self.admin_client().await;
        fixtures::set_route(&mut admin, route).await;
    }
}
