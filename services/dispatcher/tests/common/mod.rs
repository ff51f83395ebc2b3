//! Shared set-up for the dispatcher's tests: a fresh database (Postgres or SQLite), a test
//! broker, a controllable clock, partners and routes, and relays built on them.
#![allow(dead_code, clippy::unwrap_used)]

pub mod audit;
pub mod batch;
pub mod fixture;

use std::{sync::Arc, time::Duration};

use self::fixture::{FixtureOrder, insert_orders};
use chrono::{DateTime, Utc};
use uuid::Uuid;
use waybill_dispatcher::{
    RelaySettings,
    domain::{
        backoff::{BackoffPolicy, Jitter},
        model::{DispatchRecord, PartnerRecord, RouteRecord},
    },
    kafka::{KafkaSettings, TopicNames, producer::OrderProducer},
    metrics::RelayMetrics,
    relay::Relay,
    store::{DispatchStore, EventBatch, for_database},
};
use waybill_service_kit::{
    clock::{ManualClock, SharedClock, SystemClock},
    db::Database,
};
use waybill_test_kit::{TestBackend, TestDatabase, broker::TestBroker, eventually};

pub struct Harness {
    pub test_db: TestDatabase,
    pub db: Database,
    pub store: Arc<dyn DispatchStore>,
    pub broker: TestBroker,
    pub clock: ManualClock,
    pub topics: TopicNames,
}

pub fn start_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

impl Harness {
    pub async fn new(backend: TestBackend) -> Self {
        Self::with_broker(backend, TestBroker::start()).await
    }

    /// A harness on `broker` (a test that needs a broker process, say).
    pub async fn with_broker(backend: TestBackend, broker: TestBroker) -> Self {
        let test_db = TestDatabase::create(backend).await;
        let db = test_db.connect().await;
        let store = for_database(&db);
        let suffix = Uuid::new_v4().simple().to_string();
        let topics = TopicNames {
            partner_prefix: format!("t{}.partner.", &suffix[..8]),
            audit: format!("t{}.audit", &suffix[..8]),
            order_events: format!("t{}.events", &suffix[..8]),
        };
        broker.create_topic(&topics.audit, 1).await;
        broker.create_topic(&topics.order_events, 1).await;
        Self {
            test_db,
            db,
            store,
            broker,
            clock: ManualClock::new(start_time()),
            topics,
        }
    }

    pub fn settings(&self, instance: &str) -> RelaySettings {
        RelaySettings {
            instance_id: instance.to_owned(),
            topics: self.topics.clone(),
            region: "eu-test".to_owned(),
            reply_to: "http://ingest.test:50053".to_owned(),
            batch_size: 500,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(50),
            attempt_budget: 4,
            backoff: BackoffPolicy {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(3600),
                jitter: Jitter::None,
            },
            ..RelaySettings::default()
        }
    }

    pub fn kafka(&self) -> KafkaSettings {
        self.broker.kafka_settings(Duration::from_secs(2))
    }

    /// A relay on the manual clock.
    pub fn relay(&self, instance: &str) -> Relay {
        self.relay_with(
            instance,
            Arc::new(self.clock.clone()),
            self.settings(instance),
        )
    }

    pub fn relay_with(
        &self,
        _instance: &str,
        clock: SharedClock,
        settings: RelaySettings,
    ) -> Relay {
        self.relay_over(self.store.clone(), clock, settings)
    }

    /// A relay over `store` (say, a [`LeaseRecorder`] around this harness's store).
    pub fn relay_over(
        &self,
        store: Arc<dyn waybill_dispatcher::store::RelayStore>,
        clock: SharedClock,
        settings: RelaySettings,
    ) -> Relay {
        Relay::new(
            store,
            OrderProducer::new(&self.kafka()).unwrap(),
            self.broker.topic_creator(),
            clock,
            self.db.feed().clone(),
            settings,
            Arc::new(RelayMetrics::default()),
        )
    }

    pub fn system_clock() -> SharedClock {
        Arc::new(SystemClock)
    }

    /// Enrolls `id` (topic created) with a route for `country`.
    pub async fn partner(
        &self,
        id: &str,
        country: &str,
        deadline: chrono::Duration,
        resend_budget: i32,
    ) -> PartnerRecord {
        let topic = self.topics.partner_topic(id);
        self.broker.create_topic(&topic, 3).await;
        let now = self.clock_now();
        let partner = self
            .store
            .upsert_partner(&PartnerRecord {
                id: id.to_owned(),
                display_name: id.to_owned(),
                enabled: true,
                handover_deadline: deadline,
                resend_budget,
                topic,
                created_at: now,
                updated_at: now,
            })
            .await
            .unwrap();
        self.route(&format!("{id}-{country}"), id, country, 10)
            .await;
        partner
    }

    pub async fn route(
        &self,
        id: &str,
        partner: &str,
        country: &str,
        priority: i32,
    ) -> RouteRecord {
        self.store
            .set_route(
                &RouteRecord {
                    id: id.to_owned(),
                    partner_id: partner.to_owned(),
                    country_code: country.to_owned(),
                    region: String::new(),
                    postal_prefix: String::new(),
                    priority,
                    enabled: true,
                },
                self.clock_now(),
            )
            .await
            .unwrap()
    }

    pub fn clock_now(&self) -> DateTime<Utc> {
        use waybill_service_kit::clock::Clock;
        self.clock.now()
    }

    /// Places one order (placed now on the manual clock) and returns its id.
    pub async fn place(&self, country: &str, total_minor: i64) -> Uuid {
        self.place_at(country, total_minor, self.clock_now()).await
    }

    pub async fn place_at(&self, country: &str, total_minor: i64, at: DateTime<Utc>) -> Uuid {
        let order = FixtureOrder::new(country, total_minor, at);
        insert_orders(&self.db, std::slice::from_ref(&order))
            .await
            .unwrap();
        order.id
    }

    pub async fn dispatch(&self, order_id: Uuid) -> DispatchRecord {
        self.store
            .get_dispatch(order_id)
            .await
            .unwrap()
            .expect("dispatch row")
            .0
    }

    /// Whether a lease holds `order`'s row now: on Postgres a transaction locks it (a probe
    /// that skips locked rows finds nothing), on SQLite a lease owner is written in it.
    pub async fn held(&self, order_id: Uuid) -> bool {
        match self.db.backend() {
            waybill_service_kit::db::Backend::Postgres(pool) => {
                let mut tx = waybill_service_kit::db::begin(pool).await.unwrap();
                let free: Option<Uuid> = sqlx::query_scalar(
                    "SELECT order_id FROM dispatch WHERE order_id = $1 FOR UPDATE SKIP LOCKED",
                )
                .bind(order_id)
                .fetch_optional(&mut *tx)
                .await
                .unwrap();
                tx.rollback().await.unwrap();
                free.is_none()
            }
            waybill_service_kit::db::Backend::Sqlite(_) => {
                self.dispatch(order_id).await.lease_owner.is_some()
            }
        }
    }

    /// Status names of an order's history, oldest first.
    pub async fn history(&self, order_id: Uuid) -> Vec<(i64, String, String)> {
        use sqlx::Row;
        let backend = self.db.backend();
        let rows: Vec<(i64, String, String)> = match backend {
            waybill_service_kit::db::Backend::Postgres(pool) => sqlx::query(
                "SELECT seq, status, partner_id FROM order_status_events WHERE order_id = $1 ORDER BY seq",
            )
            .bind(order_id)
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get("seq"), r.get("status"), r.get("partner_id")))
            .collect(),
            waybill_service_kit::db::Backend::Sqlite(pool) => sqlx::query(
                "SELECT seq, status, partner_id FROM order_status_events WHERE order_id = ?1 ORDER BY seq",
            )
            .bind(order_id.to_string())
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get("seq"), r.get("status"), r.get("partner_id")))
            .collect(),
        };
        rows
    }

    /// Appends a partner report the way StatusIngest would.
    pub async fn report(&self, order_id: Uuid, status: &str, partner: &str) {
        let now = self.clock_now();
        match self.db.backend() {
            waybill_service_kit::db::Backend::Postgres(pool) => {
                // The dispatch row first, as every writer of an order's history; the event
                // numbered after the latest one.
                let mut tx = waybill_service_kit::db::begin(pool).await.unwrap();
                sqlx::query("SELECT 1 FROM dispatch WHERE order_id = $1 FOR UPDATE")
                    .bind(order_id)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query(
                    "WITH bumped AS (UPDATE orders SET status = $2, status_seq = (SELECT max(seq) FROM order_status_events WHERE order_id = $1) + 1 WHERE id = $1 RETURNING status_seq) \
                     INSERT INTO order_status_events (order_id, seq, status, partner_id, occurred_at, recorded_at) \
                     SELECT $1, status_seq, $2, $3, $4, $4 FROM bumped",
                )
                .bind(order_id)
                .bind(status)
                .bind(partner)
                .bind(now)
                .execute(&mut *tx)
                .await
                .unwrap();
                tx.commit().await.unwrap();
            }
            waybill_service_kit::db::Backend::Sqlite(pool) => {
                let micros = now.timestamp_micros();
                let mut tx = waybill_service_kit::db::begin(pool).await.unwrap();
                let seq: i64 = sqlx::query_scalar(
                    "UPDATE orders SET status = ?2, status_seq = (SELECT max(seq) FROM order_status_events WHERE order_id = ?1) + 1 WHERE id = ?1 RETURNING status_seq",
                )
                .bind(order_id.to_string())
                .bind(status)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
                sqlx::query(
                    "INSERT INTO order_status_events (order_id, seq, status, partner_id, occurred_at, recorded_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                )
                .bind(order_id.to_string())
                .bind(seq)
                .bind(status)
                .bind(partner)
                .bind(micros)
                .execute(&mut *tx)
                .await
                .unwrap();
                tx.commit().await.unwrap();
            }
        }
    }
}

impl Harness {
    /// Claims up to `limit` events once none is held back. On Postgres an event waits for
    /// every older writing transaction on the server to end (the publisher's watermark), and
    /// the tests of other binaries write to the same server at the same time.
    pub async fn claim_events(&self, limit: u32) -> Box<dyn EventBatch> {
        eventually(
            Duration::from_secs(10),
            "events no longer held back by another transaction",
            || async {
                let batch = self.store.claim_events(limit).await.unwrap();
                if batch.more_waiting() && batch.events().len() < limit as usize {
                    batch.release().await.unwrap();
                    return None;
                }
                Some(batch)
            },
        )
        .await
    }

    /// How many `SENT_TO_PARTNER` events the histories hold (one per order sent).
    pub async fn sent_events(&self) -> i64 {
        const COUNT: &str =
            "SELECT count(*) FROM order_status_events WHERE status = 'SENT_TO_PARTNER'";
        match self.db.backend() {
            waybill_service_kit::db::Backend::Postgres(pool) => {
                sqlx::query_scalar(COUNT).fetch_one(pool).await.unwrap()
            }
            waybill_service_kit::db::Backend::Sqlite(pool) => {
                sqlx::query_scalar(COUNT).fetch_one(pool).await.unwrap()
            }
        }
    }
}

/// A running dispatcher (admin gRPC + relay) on a loopback port.
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), waybill_dispatcher::RunError>>,
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

impl Harness {
    /// Serves the dispatcher with the system clock.
    pub async fn serve(&self, instance: &str) -> Running {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let deps = waybill_dispatcher::DispatcherDeps {
            db: self.db.clone(),
            clock: Arc::new(SystemClock),
            kafka: self.kafka(),
            topic_creator: self.broker.topic_creator(),
            relay: self.settings(instance),
            limits: waybill_service_kit::grpc::ServerLimits::default(),
            shutdown_grace: Duration::from_secs(5),
            metrics: Default::default(),
        };
        let task = tokio::spawn(waybill_dispatcher::serve(listener, deps, shutdown.clone()));
        Running {
            addr,
            shutdown,
            task,
        }
    }
}

/// A relay's store that remembers every row it leased, by owner: proves no row is leased twice.
/// It also counts the further walks of event claims, and can act before each.
pub struct LeaseRecorder {
    pub inner: Arc<dyn DispatchStore>,
    pub leased: std::sync::Mutex<Vec<(Uuid, String)>>,
    /// Further walks of event claims so far (`EventBatch::walk_more` calls).
    pub walks: Arc<std::sync::atomic::AtomicUsize>,
    /// Called with the walk's number (from 1) before each further walk.
    pub before_walk: Option<Arc<dyn Fn(usize) + Send + Sync>>,
    /// Reads of the routing table so far.
    pub routing_reads: Arc<std::sync::atomic::AtomicUsize>,
    /// How long (ms) each lease that took rows waits before it is handed back (so that leases
    /// overlap wherever the relay lets them).
    pub lease_pause_ms: std::sync::atomic::AtomicU64,
    /// Leases holding rows now (taken, not yet recorded or released).
    pub in_flight: std::sync::atomic::AtomicUsize,
    /// The most leases that held rows at once.
    pub most_in_flight: std::sync::atomic::AtomicUsize,
}

impl LeaseRecorder {
    pub fn new(inner: Arc<dyn DispatchStore>) -> Self {
        Self {
            inner,
            leased: Default::default(),
            walks: Default::default(),
            before_walk: None,
            routing_reads: Default::default(),
            lease_pause_ms: Default::default(),
            in_flight: Default::default(),
            most_in_flight: Default::default(),
        }
    }
}

impl std::fmt::Debug for LeaseRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseRecorder").finish_non_exhaustive()
    }
}

mod recorder {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use async_trait::async_trait;
    use chrono::{DateTime, Utc};
    use waybill_dispatcher::{
        domain::{model::*, routing::RoutingTable},
        store::{
            AuditBatch, BatchRecord, Cleaned, EventBatch, Lease, LeaseRequest, RecordReport,
            RelayStore, RoutingStore, StoreError,
        },
    };

    use super::LeaseRecorder;

    /// An event claim whose further walks are counted (and acted on) first.
    struct WatchedWalks {
        inner: Box<dyn EventBatch>,
        walks: Arc<AtomicUsize>,
        before_walk: Option<Arc<dyn Fn(usize) + Send + Sync>>,
    }

    #[async_trait]
    impl EventBatch for WatchedWalks {
        fn events(&self) -> &[UnpublishedEvent] {
            self.inner.events()
        }
        async fn mark_published(self: Box<Self>, now: DateTime<Utc>) -> Result<(), StoreError> {
            self.inner.mark_published(now).await
        }
        fn more_waiting(&self) -> bool {
            self.inner.more_waiting()
        }
        async fn walk_more(&mut self, limit: u32) -> Result<Vec<UnpublishedEvent>, StoreError> {
            let walk = self.walks.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(act) = &self.before_walk {
                act(walk);
            }
            self.inner.walk_more(limit).await
        }
        fn keep_walks(&mut self, walks: usize) {
            self.inner.keep_walks(walks);
        }
        async fn release(self: Box<Self>) -> Result<(), StoreError> {
            self.inner.release().await
        }
    }

    impl LeaseRecorder {
        fn handed_back(&self, lease: &Lease) {
            if !lease.orders.is_empty() {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    #[async_trait]
    impl RoutingStore for LeaseRecorder {
        async fn routing_table(&self) -> Result<RoutingTable, StoreError> {
            self.routing_reads.fetch_add(1, Ordering::SeqCst);
            self.inner.routing_table().await
        }
        async fn list_partners(&self) -> Result<Vec<PartnerRecord>, StoreError> {
            self.inner.list_partners().await
        }
        async fn list_routes(&self) -> Result<Vec<RouteRecord>, StoreError> {
            self.inner.list_routes().await
        }
    }

    #[async_trait]
    impl RelayStore for LeaseRecorder {
        async fn lease_due(&self, lease: &LeaseRequest) -> Result<Lease, StoreError> {
            let leased = self.inner.lease_due(lease).await?;
            self.leased.lock().unwrap().extend(
                leased
                    .orders
                    .iter()
                    .map(|o| (o.order_id, lease.owner.clone())),
            );
            if !leased.orders.is_empty() {
                let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.most_in_flight.fetch_max(now, Ordering::SeqCst);
                let pause = self.lease_pause_ms.load(Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            Ok(leased)
        }
        async fn lease_overdue(&self, lease: &LeaseRequest) -> Result<Lease, StoreError> {
            self.inner.lease_overdue(lease).await
        }
        async fn record(
            &self,
            lease: Lease,
            batch: &BatchRecord,
            now: DateTime<Utc>,
        ) -> Result<RecordReport, StoreError> {
            self.handed_back(&lease);
            self.inner.record(lease, batch, now).await
        }
        async fn release(&self, lease: Lease) -> Result<(), StoreError> {
            self.handed_back(&lease);
            self.inner.release(lease).await
        }
        async fn release_leases(&self, owner: &str, now: DateTime<Utc>) -> Result<u64, StoreError> {
            self.inner.release_leases(owner, now).await
        }
        async fn claim_events(&self, limit: u32) -> Result<Box<dyn EventBatch>, StoreError> {
            Ok(Box::new(WatchedWalks {
                inner: self.inner.claim_events(limit).await?,
                walks: self.walks.clone(),
                before_walk: self.before_walk.clone(),
            }))
        }
        async fn claim_audits(
            &self,
            now: DateTime<Utc>,
            limit: u32,
        ) -> Result<Box<dyn AuditBatch>, StoreError> {
            self.inner.claim_audits(now, limit).await
        }
        async fn clean_up(&self, before: DateTime<Utc>, limit: u32) -> Result<Cleaned, StoreError> {
            self.inner.clean_up(before, limit).await
        }
    }
}
