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
//! Orders and the dispatcher bind port 0 on loopback and share a throw-away database; the
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

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use waybill_dispatcher::{DispatcherDeps, RelaySettings, kafka::TopicNames};
use waybill_orders::OrdersDeps;
use waybill_proto::v1::{
    self as pb, dispatch_admin_client::DispatchAdminClient,
    order_service_client::OrderServiceClient,
};
use waybill_service_kit::{
    db::Database,
    grpc::ServerLimits,
    metrics::Metrics,
    security::{ReloadableTls, ServerSecurity},
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
        let db = test_db.connect().await;
        if self.seed_catalog {
            waybill_orders::store::seed_catalog(&db).await.unwrap();
        }
        let shutdown = CancellationToken::new();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let orders_addr = listener.local_addr().unwrap();
        let orders_metrics = Metrics::new();
        let mut servers = vec![spawn_server(waybill_orders::serve(
            listener,
            OrdersDeps {
                metrics: orders_metrics.clone(),
                ..OrdersDeps::new(&db, "test")
            },
            ServerLimits::default(),
            shutdown.clone(),
        ))];

        let ingest_counters = Arc::new(waybill_status_ingest::metrics::IngestMetrics::default());
        let ingest_metrics = Metrics::new();
        let dispatcher_metrics = Metrics::new();
        let ingest_pki = self.status_ingest_tls.then(TestPki::new);
        let ingest_tls = ingest_pki
            .as_ref()
            .map(|pki| ReloadableTls::load(pki.server_files(false)).unwrap());
        let ingest = if self.status_ingest || self.status_ingest_tls {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let running = IngestRunning::spawn(
                listener,
                &db,
                ingest_tls.clone(),
                &ingest_counters,
                ingest_metrics.clone(),
            );
            Some((addr, ingest_tls, Mutex::new(Some(running))))
        } else {
            None
        };
        let reply_to = ingest.as_ref().map_or_else(
            || "http://127.0.0.1:50053".to_owned(),
            |(addr, tls, _)| {
                let scheme = if tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{addr}")
            },
        );

        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let topics = TopicNames {
            partner_prefix: format!("s{}.partner.", &suffix[..10]),
            audit: format!("s{}.audit", &suffix[..10]),
            order_events: format!("s{}.events", &suffix[..10]),
        };
        let (broker, admin_addr) = if self.dispatcher {
            let broker = if self.broker_tls {
                TestBroker::tansu_tls()
            } else {
                TestBroker::start()
            };
            broker.create_topic(&topics.audit, 1).await;
            broker.create_topic(&topics.order_events, 1).await;
            let relay = RelaySettings {
                topics: topics.clone(),
                region: "test".to_owned(),
                reply_to,
                poll_interval: self.poll_interval,
                ..RelaySettings::default()
            };
            let mut deps = DispatcherDeps::new(
                db.clone(),
                broker.kafka_settings(Duration::from_secs(5)),
                relay,
            )
            .unwrap();
            deps.topic_creator = broker.topic_creator();
            deps.metrics = dispatcher_metrics.clone();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let admin_addr = listener.local_addr().unwrap();
            servers.push(spawn_server(waybill_dispatcher::serve(
                listener,
                deps,
                shutdown.clone(),
            )));
            (Some(broker), Some(admin_addr))
        } else {
            (None, None)
        };

        TestStack {
            orders_addr,
            admin_addr,
            orders_metrics,
            dispatcher_metrics,
            ingest_metrics,
            ingest_counters,
            ingest,
            ingest_pki,
            topics,
            db,
            broker,
            shutdown,
            tasks: Mutex::new(servers),
            _test_db: test_db,
        }
    }
}

/// Runs a service until its shutdown token is cancelled; [`TestStack::stop`] waits for it. A
/// failure is printed with its causes (a service's error names what failed, its `source` why).
fn spawn_server<E: std::error::Error + Send + 'static>(
    serve: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(error) = serve.await {
            let mut message = error.to_string();
            let mut cause = error.source();
            while let Some(inner) = cause {
                message = format!("{message}: {inner}");
                cause = inner.source();
            }
            eprintln!("test stack service failed: {message}");
        }
    })
}

/// A running system.
#[derive(Debug)]
pub struct TestStack {
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
    ingest_counters: Arc<waybill_status_ingest::metrics::IngestMetrics>,
    /// The topic names this stack's dispatcher produces to.
    pub topics: TopicNames,
    /// The shared database.
    pub db: Database,
    /// The test broker (when a dispatcher runs).
    pub broker: Option<TestBroker>,
    ingest: Option<(
        SocketAddr,
        Option<ReloadableTls>,
        Mutex<Option<IngestRunning>>,
    )>,
    /// The PKI StatusIngest's TLS certificate comes from (with `.status_ingest_tls(true)`).
    pub ingest_pki: Option<TestPki>,
    shutdown: CancellationToken,
    /// Orders, the dispatcher and the metrics endpoints, until they have stopped.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving =
            waybill_service_kit::metrics::serve(listener, metrics.clone(), self.shutdown.clone());
        lock(&self.tasks).push(tokio::spawn(async move {
            let _ = serving.await;
        }));
        addr
    }

    /// Stops every service and waits until each has finished (in-flight requests drained, the
    /// relay's leases released), then closes the pool; the test database is dropped after that.
    /// Dropping the stack does the same (see [`Drop`]); `stop` is the awaited form.
    pub async fn stop(self) {
        let tasks = self.cancel();
        for task in tasks {
            let _ = task.await;
        }
        self.db.close().await;
    }

    /// Cancels every service (StatusIngest included) and takes the tasks to wait for.
    fn cancel(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        if let Some((_, _, running)) = &self.ingest
            && let Some(running) = lock(running).take()
        {
            running.stop.cancel();
            tasks.push(running.task);
        }
        self.shutdown.cancel();
        tasks
    }

    /// Where StatusIngest listens (the orders' reply-to), when it runs.
    pub fn ingest_addr(&self) -> SocketAddr {
        self.ingest
            .as_ref()
            .expect("this stack runs no StatusIngest")
            .0
    }

    /// Stops StatusIngest (its port refuses connections until started again).
    pub async fn stop_status_ingest(&self) {
        let (_, _, running) = self
            .ingest
            .as_ref()
            .expect("this stack runs no StatusIngest");
        let taken = lock(running).take();
        if let Some(running) = taken {
            running.stop.cancel();
            let _ = running.task.await;
        }
    }

    /// Starts StatusIngest again on the same address.
    pub async fn start_status_ingest(&self) {
        let (addr, tls, running) = self
            .ingest
            .as_ref()
            .expect("this stack runs no StatusIngest");
        let mut attempts = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(error) if attempts < 50 => {
                    attempts += 1;
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("cannot bind {addr} again: {error}"),
            }
        };
        // The same counters; registered once (with the first start) in `ingest_metrics`.
        let started = IngestRunning::spawn(
            listener,
            &self.db,
            tls.clone(),
            &self.ingest_counters,
            Metrics::new(),
        );
        *lock(running) = Some(started);
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

/// How long a dropped stack waits for its services to stop before aborting them.
const DROP_GRACE: Duration = Duration::from_secs(10);

/// Stopping by construction: every service is cancelled and, on a multi-threaded runtime (every
/// test of this workspace that starts a stack), awaited for up to [`DROP_GRACE`] — as
/// [`TestStack::stop`] does — and the pool closed; whatever is still running then is aborted.
/// Only then are the broker and the database dropped (fields drop after this). On a
/// current-thread runtime the services cannot run while this thread waits: they are cancelled
/// and aborted.
impl Drop for TestStack {
    fn drop(&mut self) {
        let tasks = self.cancel();
        if tasks.is_empty() {
            // Stopped already (`stop`), or nothing left to stop.
            return;
        }
        let aborts: Vec<_> = tasks
            .iter()
            .map(tokio::task::JoinHandle::abort_handle)
            .collect();
        if let Ok(runtime) = tokio::runtime::Handle::try_current()
            && runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        {
            let db = self.db.clone();
            tokio::task::block_in_place(|| {
                runtime.block_on(async {
                    let stopped = tokio::time::timeout(DROP_GRACE, async {
                        for task in tasks {
                            let _ = task.await;
                        }
                    })
                    .await;
                    if stopped.is_err() {
                        eprintln!("test stack: a service did not stop within {DROP_GRACE:?}");
                    }
                    db.close().await;
                });
            });
        }
        for abort in aborts {
            abort.abort();
        }
    }
}

/// The guarded value, even if a panicking test poisoned the lock.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running StatusIngest.
#[derive(Debug)]
struct IngestRunning {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl IngestRunning {
    fn spawn(
        listener: tokio::net::TcpListener,
        db: &Database,
        tls: Option<ReloadableTls>,
        counters: &Arc<waybill_status_ingest::metrics::IngestMetrics>,
        registry: Metrics,
    ) -> Self {
        let stop = CancellationToken::new();
        let deps = waybill_status_ingest::IngestDeps {
            metrics: Arc::clone(counters),
            registry,
            ..waybill_status_ingest::IngestDeps::new(db, AUDIENCE)
        };
        let limits = ServerLimits {
            security: ServerSecurity {
                tls,
                ..ServerSecurity::default()
            },
            ..ServerLimits::default()
        };
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let _ = waybill_status_ingest::serve(listener, deps, limits, stop).await;
            }
        });
        Self { stop, task }
    }
}
