//! Shared by the connector tests: a stack with StatusIngest, partners enrolled with keys,
//! connectors built on the SDK pointed at the stack, a recording adapter, and waits.
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use tokio_util::sync::CancellationToken;
use waybill_connector_sdk::{
    Acceptance, ClusterConfig, Connector, ConnectorBuilder, PartnerError, ReportSigningKey,
    ShipmentContext, TransportPartner, proto::DispatchedOrder, sandbox::SandboxMarkers,
};
use waybill_integration_tests::{AUDIENCE, TestStack};
use waybill_proto::v1::{self as pb, OrderStatus};
pub use waybill_test_kit::eventually;
use waybill_test_kit::fixtures::{OrderFixture as _, sample_order};
use waybill_token::SigningKey;

/// The process-wide telemetry pipeline, as the `waybill` binary installs it (W3C trace
/// context propagated through the services), with its logs.
pub fn logs() {
    use waybill_service_kit::telemetry;
    static GUARD: OnceLock<Option<telemetry::TelemetryGuard>> = OnceLock::new();
    GUARD.get_or_init(|| telemetry::init("connector-test", telemetry::LogFormat::Text).ok());
}

/// A stack with StatusIngest.
pub async fn stack() -> TestStack {
    logs();
    TestStack::builder()
        .status_ingest(true)
        .poll_interval(Duration::from_millis(500))
        .start()
        .await
}

/// A partner's signing key from a seed.
pub fn signing_key(seed: u8, key_id: &str) -> ReportSigningKey {
    ReportSigningKey::from_key(SigningKey::from_bytes(&[seed; 32]), key_id).unwrap()
}

/// Enrols `partner` with a route for `country` and a key; returns the key.
pub async fn enroll(stack: &TestStack, partner: &str, country: &str, seed: u8) -> ReportSigningKey {
    stack.enroll_partner(partner, country).await;
    let key = signing_key(seed, &format!("{partner}-k1"));
    stack
        .add_partner_key(partner, key.key_id(), &key.public_key())
        .await;
    key
}

/// The cluster config of `stack`'s broker, for `partner`'s topic there.
pub fn cluster(stack: &TestStack, name: &str) -> ClusterConfig {
    let broker = stack.broker();
    broker.client_options().iter().fold(
        ClusterConfig::new(name, broker.bootstrap_servers())
            .topic_prefix(stack.topics.partner_prefix.clone())
            .session_timeout(Duration::from_secs(6))
            .fetch_wait(Duration::from_millis(5)),
        |cluster, (key, value)| cluster.property(key, value),
    )
}

/// A fresh SQLite inbox path.
pub fn inbox_path() -> std::path::PathBuf {
    std::env::temp_dir()
        .join(format!("waybill-connector-test-{}", uuid::Uuid::new_v4()))
        .join("inbox.db")
}

/// A connector builder for `partner` on `stack` with quick retries and commits.
pub fn builder(stack: &TestStack, partner: &str, key: &ReportSigningKey) -> ConnectorBuilder {
    builder_on(cluster(stack, "local"), partner, key)
}

/// A connector builder for `partner` on one given cluster.
pub fn builder_on(
    cluster: ClusterConfig,
    partner: &str,
    key: &ReportSigningKey,
) -> ConnectorBuilder {
    Connector::builder(partner)
        .cluster(cluster)
        .signing_key(key.clone())
        .audience(AUDIENCE)
        .inbox_path(inbox_path())
        .report_retries(200, Duration::from_millis(50), Duration::from_millis(500))
        .adapter_retries(5, Duration::from_millis(20), Duration::from_millis(200))
        .adapter_timeout(Duration::from_secs(2))
        .commit_interval(Duration::from_millis(100))
        .revoke_bound(Duration::from_secs(5))
        .shutdown_grace(Duration::from_secs(5))
}

/// A running connector: stop it with [`Running::stop`].
pub struct Running {
    pub health: waybill_connector_sdk::metrics::ConnectorHealth,
    pub inbox: Arc<dyn waybill_connector_sdk::inbox::Inbox>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Graceful stop: finish in-flight work, commit, leave the group.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("connector stops within 30 s")
            .unwrap();
    }

    /// Waits until this connector has at least one partition assigned.
    pub async fn wait_assigned(&self) {
        eventually(Duration::from_secs(30), "partitions assigned", || async {
            self.health
                .clusters()
                .iter()
                .all(|c| !c.partitions.is_empty())
        })
        .await;
    }

    /// The partitions assigned on the first cluster.
    pub fn partitions(&self) -> Vec<i32> {
        self.health.clusters()[0]
            .partitions
            .keys()
            .copied()
            .collect()
    }
}

impl Drop for Running {
    /// A test that fails midway must not leave a poll thread behind: the runtime would wait
    /// for it forever.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts `connector` with `adapter`.
pub fn start<P: TransportPartner>(connector: Connector, adapter: P) -> Running {
    let stop = CancellationToken::new();
    let health = connector.health();
    let inbox = connector.inbox();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { connector.run(adapter, stop).await.unwrap() }
    });
    Running {
        health,
        inbox,
        stop,
        task,
    }
}

/// An adapter that accepts every order with `T-<order id>`, records each call, and honours
/// the `[fail-N]` and `[reject]` sandbox markers; optionally slow.
#[derive(Clone, Default)]
pub struct Recorder {
    pub calls: Arc<Mutex<Vec<String>>>,
    pub delay: Duration,
}

impl Recorder {
    pub fn calls_for(&self, order_id: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|o| *o == order_id)
            .count()
    }

    pub fn by_order(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for order in self.calls.lock().unwrap().iter() {
            *counts.entry(order.clone()).or_default() += 1;
        }
        counts
    }
}

impl TransportPartner for Recorder {
    async fn request_shipment(
        &self,
        order: &DispatchedOrder,
        ctx: &ShipmentContext,
    ) -> Result<Acceptance, PartnerError> {
        self.calls.lock().unwrap().push(order.order_id.clone());
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let markers = SandboxMarkers::of(order);
        if ctx.attempt() <= markers.fail_times {
            return Err(PartnerError::retryable("test: not yet"));
        }
        if markers.reject {
            return Ok(Acceptance::rejected("test: no", "OUT_OF_AREA"));
        }
        Ok(Acceptance::accepted(tracking_id(ctx.idempotency_key())))
    }
}

/// The tracking id the [`Recorder`] gives an order.
pub fn tracking_id(order_id: &str) -> String {
    format!("T-{order_id}")
}

/// A PlaceOrder request shipping to `country`, with `line2` (sandbox markers).
pub fn order_request(key: &str, country: &str, line2: &str) -> pb::PlaceOrderRequest {
    sample_order(key, country)
        .with_line("LAMP-DESK", 1)
        .with_line2(line2)
}

/// Places an order; returns its id. Retries `UNAVAILABLE` with the same idempotency key, as
/// a storefront would (a loaded test machine can time the database pool out).
pub async fn place(stack: &TestStack, country: &str, line2: &str) -> String {
    let mut orders = stack.orders_client().await;
    let request = order_request(&uuid::Uuid::new_v4().to_string(), country, line2);
    let mut attempts = 0;
    loop {
        match orders.place_order(request.clone()).await {
            Ok(response) => return response.into_inner().order.unwrap().id,
            Err(status) if status.code() == tonic::Code::Unavailable && attempts < 5 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("place order: {status}"),
        }
    }
}

/// The order as Orders returns it.
pub async fn get_order(stack: &TestStack, order_id: &str) -> pb::Order {
    let mut orders = stack.orders_client().await;
    orders
        .get_order(pb::GetOrderRequest {
            order_id: order_id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// How many events of `status` the order's history holds.
pub fn events(order: &pb::Order, status: OrderStatus) -> usize {
    order
        .status_history
        .iter()
        .filter(|e| e.status() == status)
        .count()
}

/// Waits until the order's history holds an event of `status`; returns the order.
pub async fn wait_for_status(
    stack: &TestStack,
    order_id: &str,
    status: OrderStatus,
    within: Duration,
) -> pb::Order {
    let what = format!("order {order_id} has a {status:?} event");
    eventually(within, &what, || async {
        let order = get_order(stack, order_id).await;
        (events(&order, status) > 0).then_some(order)
    })
    .await
}

/// The dispatch row's state.
pub async fn dispatch_state(stack: &TestStack, order_id: &str) -> pb::DispatchState {
    let mut admin = stack.admin_client().await;
    admin
        .get_dispatch(pb::GetDispatchRequest {
            order_id: order_id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .state()
}

/// A producer on `stack`'s broker, for duplicates and poison.
pub fn producer(stack: &TestStack) -> rdkafka::producer::FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack.broker().bootstrap_servers())
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap()
}

/// Produces a record with `key`, `payload` and `headers` to `topic` partition `partition`.
pub async fn produce(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    partition: i32,
    key: &str,
    payload: &[u8],
    headers: &HashMap<String, String>,
) {
    use rdkafka::message::{Header, OwnedHeaders};
    let mut owned = OwnedHeaders::new();
    for (name, value) in headers {
        owned = owned.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    producer
        .send(
            rdkafka::producer::FutureRecord::to(topic)
                .partition(partition)
                .key(key)
                .payload(payload)
                .headers(owned),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}
