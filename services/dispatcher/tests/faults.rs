//! The relay under broker faults, on Postgres and SQLite with a real Kafka-protocol broker:
//! failed re-sends back off within a budget, missing topics are created (at start-up and when a
//! send meets one), an audit copy that fails never holds back or duplicates the partner's copy,
//! a producer that cannot send is rebuilt and says so in health and metrics, and (with a Tansu
//! broker process) a broker stall that fences the idempotent producer is recovered from.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use chrono::Duration as Span;
use common::Harness;
use tokio_util::sync::CancellationToken;
use waybill_dispatcher::{
    DispatcherDeps, RELAY_HEALTH_NAME, RelaySettings,
    domain::model::{PartnerRecord, RouteRecord},
    kafka::{
        KafkaSettings, TopicCreator, TopicError, messages::OutgoingMessage, producer::OrderProducer,
    },
    metrics::RelayMetrics,
    relay::Relay,
};
use waybill_proto::v1::{
    DispatchState, GetRelayStatsRequest, dispatch_admin_client::DispatchAdminClient,
};
use waybill_service_kit::grpc::ServerLimits;
use waybill_test_kit::{TestBackend, broker::TestBroker, eventually};

waybill_test_kit::on_both_backends!(
    failed_resends_back_off_within_the_budget,
    missing_topics_are_created_when_a_send_meets_them,
    a_failing_audit_copy_neither_holds_back_nor_duplicates_the_partner_copy,
    start_up_ensures_every_topic,
    a_producer_that_cannot_send_is_rebuilt_and_health_says_so,
    an_order_with_no_routes_at_all_says_how_to_set_them_up,
);

/// Creates topics through the test broker unless they are refused, and remembers every call.
#[derive(Debug)]
struct ControlledCreator {
    inner: Arc<dyn TopicCreator>,
    refused: Mutex<HashSet<String>>,
    calls: Mutex<Vec<String>>,
}

impl ControlledCreator {
    fn new(broker: &TestBroker) -> Arc<Self> {
        Arc::new(Self {
            inner: broker.topic_creator(),
            refused: Mutex::default(),
            calls: Mutex::default(),
        })
    }

    fn refuse(&self, topic: &str, refused: bool) {
        let mut set = self.refused.lock().unwrap();
        if refused {
            set.insert(topic.to_owned());
        } else {
            set.remove(topic);
        }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl TopicCreator for ControlledCreator {
    async fn ensure_topic(&self, topic: &str) -> Result<(), TopicError> {
        self.calls.lock().unwrap().push(topic.to_owned());
        if self.refused.lock().unwrap().contains(topic) {
            return Err(TopicError {
                topic: topic.to_owned(),
                reason: "refused by the test".to_owned(),
            });
        }
        self.inner.ensure_topic(topic).await
    }
}

/// Producer settings as a broker with auto-creation turned off sees them: a topic it does not
/// know fails the send ("unknown topic") instead of appearing.
fn no_auto_create(h: &Harness) -> KafkaSettings {
    let mut kafka = h.kafka();
    kafka
        .options
        .push(("allow.auto.create.topics".to_owned(), "false".to_owned()));
    kafka
}

fn relay_with(
    h: &Harness,
    kafka: &KafkaSettings,
    topics: Arc<dyn TopicCreator>,
    settings: RelaySettings,
) -> Relay {
    Relay::new(
        h.store.clone(),
        OrderProducer::new(kafka).unwrap(),
        topics,
        Arc::new(h.clock.clone()),
        h.db.feed().clone(),
        settings,
        Arc::new(RelayMetrics::default()),
    )
}

/// Enrols `id` with a route for `country` without creating its topic.
async fn partner_without_topic(h: &Harness, id: &str, country: &str) {
    let now = h.clock_now();
    h.store
        .upsert_partner(&PartnerRecord {
            id: id.to_owned(),
            display_name: id.to_owned(),
            enabled: true,
            handover_deadline: Span::minutes(10),
            resend_budget: 2,
            topic: h.topics.partner_topic(id),
            created_at: now,
            updated_at: now,
        })
        .await
        .unwrap();
    h.store
        .set_route(
            &RouteRecord {
                id: format!("{id}-{country}"),
                partner_id: id.to_owned(),
                country_code: country.to_owned(),
                region: String::new(),
                postal_prefix: String::new(),
                priority: 10,
                enabled: true,
            },
            now,
        )
        .await
        .unwrap();
}

/// A standalone dispatcher starts with no partners or routes: the operator must learn from the
/// order itself what to do, not just that its country matched nothing.
async fn an_order_with_no_routes_at_all_says_how_to_set_them_up(backend: TestBackend) {
    let h = Harness::new(backend).await;
    let order = h.place("DE", 100).await;
    h.relay("dispatcher-a").run_cycle(true).await.unwrap();
    let row = h.dispatch(order).await;
    assert_eq!(row.state, DispatchState::Unroutable);
    let reason = row.last_error.unwrap_or_default();
    for needed in ["EnrollPartner", "SetRoute", "RetryDispatches"] {
        assert!(reason.contains(needed), "{reason}");
    }

    // Once a partner and a route exist, the operator's retry sends it.
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    h.store
        .retry(&[order], &Default::default(), h.clock_now())
        .await
        .unwrap();
    h.relay("dispatcher-a").run_cycle(true).await.unwrap();
    assert_eq!(h.dispatch(order).await.state, DispatchState::Sent);
}

async fn failed_resends_back_off_within_the_budget(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 5).await;
    let order = h.place("DE", 100).await;
    let relay = h.relay("dispatcher-a");
    relay.run_cycle(true).await.unwrap();
    assert_eq!(h.dispatch(order).await.state, DispatchState::Sent);

    // The partner stays silent past its deadline while the broker is down: each failed re-send
    // waits twice as long as the one before (base 1 s, no jitter in tests), not a fixed step.
    assert!(h.broker.set_available(false));
    h.clock.advance(Span::minutes(10));
    for (failures, delay) in [(1, 1), (2, 2), (3, 4)] {
        assert_eq!(relay.run_cycle(true).await.unwrap().overdue, 1);
        let row = h.dispatch(order).await;
        assert_eq!((row.state, row.attempts), (DispatchState::Sent, failures));
        assert_eq!(row.ack_due_at, Some(h.clock_now() + Span::seconds(delay)));
        assert_eq!(row.resends, 0, "a failed re-send is not a re-send");
        h.clock
            .advance(Span::seconds(delay) - Span::milliseconds(1));
        assert_eq!(
            relay.run_cycle(true).await.unwrap().overdue,
            0,
            "backing off"
        );
        h.clock.advance(Span::milliseconds(1));
    }
    // The fourth failure spends the attempt budget (4 in tests): flagged for operators instead
    // of retried forever.
    assert_eq!(relay.run_cycle(true).await.unwrap().overdue, 1);
    let row = h.dispatch(order).await;
    assert_eq!(row.state, DispatchState::Unacknowledged);
    assert_eq!(row.ack_due_at, None);
    let reason = row.last_error.unwrap_or_default();
    assert!(reason.contains("4 re-sends failed"), "{reason}");
    let (_, attempts) = h.store.get_dispatch(order).await.unwrap().unwrap();
    assert_eq!(
        attempts.len(),
        2,
        "the first failed re-send and the last one: not one row per failure (the first-try \
         send is on the row, not in the log)"
    );
    assert_eq!(relay.metrics().snapshot().resend_failures, 4);

    // An operator sends it back; with the broker up it goes out again.
    assert!(h.broker.set_available(true));
    h.store
        .retry(&[order], &Default::default(), h.clock_now())
        .await
        .unwrap();
    relay.run_cycle(true).await.unwrap();
    let row = h.dispatch(order).await;
    assert_eq!((row.state, row.attempts), (DispatchState::Sent, 0));
}

async fn missing_topics_are_created_when_a_send_meets_them(backend: TestBackend) {
    let h = Harness::new(backend).await;
    partner_without_topic(&h, "acme", "DE").await;
    let order = h.place("DE", 100).await;
    let creator = ControlledCreator::new(&h.broker);
    let relay = relay_with(
        &h,
        &no_auto_create(&h),
        creator.clone(),
        h.settings("dispatcher-a"),
    );

    // The broker has no such topic and will not create one: the relay does, and the order
    // goes out in the same cycle, without spending an attempt.
    relay.run_cycle(true).await.unwrap();
    let row = h.dispatch(order).await;
    assert_eq!((row.state, row.attempts), (DispatchState::Sent, 0));
    assert!(creator.calls().contains(&h.topics.partner_topic("acme")));
    assert!(relay.metrics().snapshot().topics_created >= 1);
    let on_topic = h
        .broker
        .read_topic(&h.topics.partner_topic("acme"), 1, Duration::from_secs(10))
        .await;
    assert_eq!(on_topic.len(), 1);
    assert_eq!(on_topic[0].key, order.to_string());
}

async fn a_failing_audit_copy_neither_holds_back_nor_duplicates_the_partner_copy(
    backend: TestBackend,
) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    let audited = h.place("DE", 2_000_000).await;
    let creator = ControlledCreator::new(&h.broker);
    let mut settings = h.settings("dispatcher-a");
    // An audit topic the broker does not have and may not create (yet).
    settings.topics.audit = format!("{}.missing", h.topics.audit);
    creator.refuse(&settings.topics.audit, true);
    let relay = relay_with(&h, &no_auto_create(&h), creator.clone(), settings.clone());

    relay.run_cycle(true).await.unwrap();
    let row = h.dispatch(audited).await;
    assert_eq!(
        (row.state, row.attempts),
        (DispatchState::Sent, 0),
        "the partner's copy decides the order's state"
    );
    let backlog = h.store.backlog(h.clock_now()).await.unwrap();
    assert_eq!(
        backlog.audit_pending, 1,
        "the audit copy waits in the outbox"
    );
    assert_eq!(relay.metrics().snapshot().audit_deferred, 1);

    // Still failing when due: it backs off again, the order is not touched.
    h.clock.advance(Span::seconds(1));
    relay.run_cycle(true).await.unwrap();
    assert_eq!(
        h.store.backlog(h.clock_now()).await.unwrap().audit_pending,
        1
    );

    // The audit topic can be created now: the copy goes out from the outbox.
    creator.refuse(&settings.topics.audit, false);
    h.clock.advance(Span::minutes(1));
    relay.run_cycle(true).await.unwrap();
    assert_eq!(
        h.store.backlog(h.clock_now()).await.unwrap().audit_pending,
        0
    );
    assert_eq!(relay.metrics().snapshot().audits_published, 1);
    let audit = h
        .broker
        .read_topic(&settings.topics.audit, 1, Duration::from_secs(10))
        .await;
    assert_eq!(
        audit.iter().map(|m| m.key.clone()).collect::<Vec<_>>(),
        [audited.to_string()]
    );
    let partner_copies = h
        .broker
        .read_topic(&h.topics.partner_topic("acme"), 2, Duration::from_secs(3))
        .await;
    assert_eq!(partner_copies.len(), 1, "the partner got exactly one copy");
    assert_eq!(h.dispatch(audited).await.state, DispatchState::Sent);
}

async fn start_up_ensures_every_topic(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    h.partner("globex", "FR", Span::minutes(10), 2).await;
    let creator = ControlledCreator::new(&h.broker);
    let relay = relay_with(&h, &h.kafka(), creator.clone(), h.settings("dispatcher-a"));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone(), Duration::from_secs(5)));
    let wanted: HashSet<String> = [
        h.topics.audit.clone(),
        h.topics.order_events.clone(),
        h.topics.partner_topic("acme"),
        h.topics.partner_topic("globex"),
    ]
    .into();
    eventually(Duration::from_secs(10), "every topic created", || async {
        let calls: HashSet<String> = creator.calls().into_iter().collect();
        wanted.is_subset(&calls).then_some(())
    })
    .await;
    shutdown.cancel();
    running.await.unwrap();
}

async fn a_producer_that_cannot_send_is_rebuilt_and_health_says_so(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    let mut settings = h.settings("dispatcher-a");
    settings.backoff.base = Duration::from_millis(100);
    settings.backoff.cap = Duration::from_millis(200);
    settings.attempt_budget = 1_000;
    let mut deps = DispatcherDeps::new(h.db.clone(), h.kafka(), settings).unwrap();
    deps.topic_creator = h.broker.topic_creator();
    deps.limits = ServerLimits::default();
    let metrics = deps.metrics.clone();
    let series = |name: &'static str| {
        let metrics = metrics.clone();
        async move {
            let text = metrics.render().await.unwrap();
            text.lines()
                .find_map(|line| {
                    line.strip_prefix(name)?
                        .strip_prefix(' ')?
                        .parse::<f64>()
                        .ok()
                })
                .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(waybill_dispatcher::serve(listener, deps, shutdown.clone()));
    let endpoint = format!("http://{addr}");
    let channel = tonic::transport::Endpoint::from_shared(endpoint)
        .unwrap()
        .connect_lazy();
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let admin = DispatchAdminClient::new(channel);
    let relay_status = || {
        let mut health = health.clone();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: RELAY_HEALTH_NAME.to_owned(),
                })
                .await
                .ok()
                .map(|r| r.into_inner().status())
        }
    };
    use tonic_health::pb::health_check_response::ServingStatus;
    eventually(Duration::from_secs(10), "the relay serving", || async {
        (relay_status().await == Some(ServingStatus::Serving)).then_some(())
    })
    .await;

    // The broker goes away while orders keep coming (a real clock here: the relay runs on its
    // own loops). Whole batches fail; after a few the producer is rebuilt, and the relay's
    // health component says it cannot send while the admin API stays up.
    assert!(h.broker.set_available(false));
    for _ in 0..3 {
        h.place_at("DE", 100, chrono::Utc::now()).await;
    }
    eventually(
        Duration::from_secs(60),
        "the relay not serving during the outage",
        || async { (relay_status().await == Some(ServingStatus::NotServing)).then_some(()) },
    )
    .await;
    let stats = eventually(Duration::from_secs(90), "the producer rebuilt", || async {
        let stats = admin
            .clone()
            .get_relay_stats(GetRelayStatsRequest {})
            .await
            .unwrap()
            .into_inner();
        (stats.producer_rebuilds >= 1).then_some(stats)
    })
    .await;
    assert!(!stats.can_send);
    assert!(stats.failed_sends >= 3);
    assert!(!stats.last_send_error.is_empty());
    // The same in the series an SRE alerts on.
    assert_eq!(series("waybill_dispatcher_can_send").await, 0.0);
    assert!(series("waybill_dispatcher_send_failures_total").await >= 3.0);
    assert!(series("waybill_dispatcher_producer_rebuilds_total").await >= 1.0);
    let overall = health
        .clone()
        .check(tonic_health::pb::HealthCheckRequest {
            service: waybill_dispatcher::SERVICE_NAME.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        overall.status(),
        ServingStatus::Serving,
        "operators can still act"
    );

    // The broker is back: the rebuilt producer sends, health turns SERVING, nothing is lost.
    assert!(h.broker.set_available(true));
    eventually(
        Duration::from_secs(60),
        "the relay serving again",
        || async { (relay_status().await == Some(ServingStatus::Serving)).then_some(()) },
    )
    .await;
    let backlog = eventually(Duration::from_secs(60), "every order sent", || async {
        let backlog = h.store.backlog(chrono::Utc::now()).await.unwrap();
        (backlog.by_state == [(DispatchState::Sent, 3)]).then_some(backlog)
    })
    .await;
    // Sent, not confirmed: the partner's oldest waiting order is in the backlog (its gauge).
    assert_eq!(
        backlog.oldest_unconfirmed_by_partner.len(),
        1,
        "{backlog:?}"
    );
    assert_eq!(series("waybill_dispatcher_can_send").await, 1.0);
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// A broker that stalls longer than the produce timeout with requests in flight: on Tansu the
/// idempotent producer then gets `ProducerFenced` on every later send and librdkafka does not
/// call that fatal. The relay must rebuild its producer and deliver everything. Runs against a
/// Tansu process (`WAYBILL_TANSU_BIN`, installed by `scripts/test.sh`); skipped with a message
/// when there is none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stall_that_fences_the_producer_is_recovered_from() {
    waybill_test_kit::require!(
        std::env::var_os("WAYBILL_TANSU_BIN").is_some(),
        "WAYBILL_TANSU_BIN is not set (scripts/test.sh installs Tansu and sets it)"
    );
    let broker = TestBroker::tansu();
    let h = Harness::with_broker(TestBackend::Postgres, broker).await;
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    let mut settings = h.settings("dispatcher-a");
    settings.backoff.base = Duration::from_millis(200);
    settings.backoff.cap = Duration::from_millis(500);
    settings.attempt_budget = 1_000;
    let kafka = h.broker.kafka_settings(Duration::from_secs(1));
    let producer = OrderProducer::new(&kafka).unwrap();
    let send_health = producer.health().clone();
    let relay = Relay::new(
        h.store.clone(),
        producer,
        h.broker.topic_creator(),
        Arc::new(waybill_service_kit::clock::SystemClock),
        h.db.feed().clone(),
        settings,
        Arc::new(RelayMetrics::default()),
    );
    let metrics = relay.metrics().clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone(), Duration::from_secs(5)));

    let mut placed = vec![h.place_at("DE", 100, chrono::Utc::now()).await];
    eventually(Duration::from_secs(30), "one send counted", || async {
        (metrics.snapshot().sent == 1).then_some(())
    })
    .await;
    // Orders placed while the broker is frozen: their produce requests time out in flight.
    assert!(h.broker.pause(true));
    for _ in 0..5 {
        placed.push(h.place_at("DE", 100, chrono::Utc::now()).await);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(h.broker.pause(false));
    for _ in 0..5 {
        placed.push(h.place_at("DE", 100, chrono::Utc::now()).await);
    }
    eventually(Duration::from_secs(90), "every order sent", || async {
        let backlog = h.store.backlog(chrono::Utc::now()).await.unwrap();
        (backlog.by_state == [(DispatchState::Sent, placed.len() as i64)]).then_some(())
    })
    .await;
    let on_topic = h
        .broker
        .read_topic(
            &h.topics.partner_topic("acme"),
            placed.len() * 3,
            Duration::from_secs(10),
        )
        .await;
    let keys: HashSet<String> = on_topic.iter().map(|m| m.key.clone()).collect();
    let wanted: HashSet<String> = placed.iter().map(ToString::to_string).collect();
    assert!(
        wanted.is_subset(&keys),
        "every order is on the partner topic"
    );
    eprintln!(
        "producer rebuilds: {}, duplicates on the topic: {}",
        send_health.snapshot().rebuilds,
        on_topic.len() - keys.len()
    );
    shutdown.cancel();
    running.await.unwrap();
}

/// A message the producer's local queue has no room for waits for room (up to the produce
/// timeout) instead of failing: a batch larger than the queue is sent whole, in order of
/// acknowledgement or not, and every message is on the topic once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_local_queue_waits_for_room() {
    let broker = TestBroker::start();
    let topic = format!("queue-{}", uuid::Uuid::new_v4().simple());
    broker.create_topic(&topic, 1).await;
    let mut kafka = broker.kafka_settings(Duration::from_secs(10));
    // Room for 5 messages: the other 45 of the batch find the queue full at first.
    kafka
        .options
        .push(("queue.buffering.max.messages".into(), "5".into()));
    let producer = OrderProducer::new(&kafka).unwrap();
    let messages: Vec<OutgoingMessage> = (0..50)
        .map(|i| OutgoingMessage {
            topic: topic.clone(),
            key: format!("order-{i}"),
            payload: vec![1, 2, 3],
            headers: Vec::new(),
        })
        .collect();

    let outcomes = producer.send_all(&messages).await;

    let failed: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(failed.is_empty(), "every message sent: {failed:?}");
    let on_topic = broker.read_topic(&topic, 50, Duration::from_secs(15)).await;
    let keys: HashSet<String> = on_topic.iter().map(|m| m.key.clone()).collect();
    assert_eq!(keys.len(), 50, "each message on the topic");
    assert_eq!(on_topic.len(), 50, "and only once");
}
