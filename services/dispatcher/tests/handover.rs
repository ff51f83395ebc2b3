//! Telling a partner that is behind from one that is gone at the handover deadline, on Postgres
//! and SQLite: where each send landed is kept on the dispatch row, and (against a Tansu broker
//! process, with a real consumer group) an order its partner's live group has not read yet is
//! not re-sent, nor one the group read without confirming yet, while one whose group is gone
//! is.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::Duration as Span;
use common::{
    Harness,
    batch::{fence, lease, sent},
};
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer},
};
use uuid::Uuid;
use waybill_dispatcher::{
    domain::model::SentPosition,
    kafka::{
        producer::OrderProducer,
        progress::{Ask, GroupProbe, connector_group},
    },
    metrics::RelayMetrics,
    relay::Relay,
    store::{BatchRecord, Lease, RowUpdate},
};
use waybill_proto::v1::DispatchState;
use waybill_test_kit::{TestBackend, broker::TestBroker, eventually, on_both_backends};

on_both_backends!(
    where_a_send_landed_is_kept_until_the_next_send,
    a_broker_that_cannot_tell_leaves_the_resend_rule,
    a_partner_behind_or_holding_is_not_resent_one_that_left_is,
);

const AT: SentPosition = SentPosition {
    partition: 2,
    offset: 41,
};

async fn where_a_send_landed_is_kept_until_the_next_send(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 5).await;
    let order = h.place("DE", 100).await;
    let first = lease(&h, "a", 10);
    let leased = h.store.lease_due(&first).await.unwrap();
    assert_eq!(leased.orders[0].sent_position, None, "not sent yet");
    let sent_at = h.clock_now();
    let record = |update: RowUpdate| BatchRecord {
        updates: vec![update],
        ..BatchRecord::default()
    };
    h.store
        .record(
            leased,
            &record(RowUpdate {
                sent_position: Some(AT),
                ..sent(order, sent_at)
            }),
            sent_at,
        )
        .await
        .unwrap();

    // The overdue lease returns it, with the send's time.
    h.clock.advance(Span::minutes(10));
    let overdue = h.store.lease_overdue(&lease(&h, "a", 10)).await.unwrap();
    let leased = overdue.orders[0].clone();
    assert_eq!(leased.sent_position, Some(AT));
    assert_eq!(leased.sent_at, Some(sent_at));

    // An update that keeps the row as leased (the deadline moved on) keeps it.
    let extended = RowUpdate {
        state: DispatchState::Sent,
        ack_due_at: Some(h.clock_now() + Span::minutes(10)),
        ..RowUpdate::keep(&leased, h.clock_now())
    };
    h.store
        .record(overdue, &record(extended), h.clock_now())
        .await
        .unwrap();
    h.clock.advance(Span::minutes(10));
    let overdue = h.store.lease_overdue(&lease(&h, "a", 10)).await.unwrap();
    assert_eq!(overdue.orders[0].sent_position, Some(AT));
    assert_eq!(overdue.orders[0].sent_at, Some(sent_at), "no send since");

    // A re-send writes where its copy landed; one whose position is unknown writes none.
    let resent_at = h.clock_now();
    let moved = SentPosition {
        partition: 0,
        offset: 7_000_000_000,
    };
    h.store
        .record(
            overdue,
            &record(RowUpdate {
                resends: 1,
                sent_position: Some(moved),
                ..sent(order, resent_at)
            }),
            resent_at,
        )
        .await
        .unwrap();
    h.clock.advance(Span::minutes(10));
    let request = lease(&h, "a", 10);
    let overdue = h.store.lease_overdue(&request).await.unwrap();
    assert_eq!(overdue.orders[0].sent_position, Some(moved));
    assert_eq!(overdue.orders[0].sent_at, Some(resent_at));
    h.store
        .record(
            overdue,
            &record(RowUpdate {
                resends: 2,
                ..sent(order, h.clock_now())
            }),
            h.clock_now(),
        )
        .await
        .unwrap();
    // The fence still applies: a record under a lease that ended writes nothing.
    let late = h
        .store
        .record(
            Lease::new(fence(&request), Vec::new()),
            &record(RowUpdate {
                sent_position: Some(AT),
                ..sent(order, h.clock_now())
            }),
            h.clock_now(),
        )
        .await
        .unwrap();
    assert_eq!(late.fenced, [order]);
    h.clock.advance(Span::minutes(10));
    let overdue = h.store.lease_overdue(&lease(&h, "a", 10)).await.unwrap();
    assert_eq!(overdue.orders[0].sent_position, None);
}

/// librdkafka's mock cluster (what `waybill dev` embeds) cannot list groups: the relay cannot
/// tell, counts it, and re-sends as it always did.
async fn a_broker_that_cannot_tell_leaves_the_resend_rule(backend: TestBackend) {
    let h = Harness::with_broker(backend, TestBroker::mock()).await;
    h.partner("acme", "DE", Span::minutes(10), 5).await;
    let order = h.place("DE", 100).await;
    let relay = h.relay("dispatcher-a");
    relay.run_cycle(true).await.unwrap();
    h.clock.advance(Span::minutes(10));
    assert_eq!(relay.run_cycle(true).await.unwrap().overdue, 1);
    let row = h.dispatch(order).await;
    assert_eq!((row.state, row.resends), (DispatchState::Sent, 1));
    let metrics = relay.metrics().snapshot();
    assert_eq!(metrics.handover_probe_failures, 1);
    assert_eq!((metrics.resent, metrics.handover_extended), (1, 0));
}

/// A member of the partner's consumer group (the connector SDK's default group), polled on a
/// thread of its own; the test commits its offsets as the SDK would after the work is safe.
struct PartnerGroup {
    consumer: Arc<BaseConsumer>,
    /// Records received so far (it has joined and been assigned partitions once it has any).
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    poller: Option<std::thread::JoinHandle<()>>,
    topic: String,
}

impl PartnerGroup {
    fn join(broker: &TestBroker, partner_id: &str, topic: &str) -> Self {
        let mut config = ClientConfig::new();
        for (key, value) in broker.client_options() {
            config.set(key, value);
        }
        let consumer: BaseConsumer = config
            .set("bootstrap.servers", broker.bootstrap_servers())
            .set("group.id", connector_group(partner_id))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "2000")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let consumer = Arc::new(consumer);
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicUsize::new(0));
        let poller = {
            let (consumer, stop, received) = (consumer.clone(), stop.clone(), received.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(Ok(_)) = consumer.poll(Duration::from_millis(50)) {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        Self {
            consumer,
            received,
            stop,
            poller: Some(poller),
            topic: topic.to_owned(),
        }
    }

    /// Commits `offset` (the next record to read) on `partition`.
    async fn commit(&self, partition: i32, offset: i64) {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
            .unwrap();
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await
            .unwrap()
            .unwrap();
    }

    /// Leaves the group (the consumer closes when the last handle is dropped).
    fn leave(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(poller) = self.poller.take() {
            poller.join().unwrap();
        }
    }
}

impl Drop for PartnerGroup {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until the broker says the partner's group is `live` (or not).
async fn group_live(probe: &GroupProbe, topic: &str, live: bool) {
    eventually(
        Duration::from_secs(60),
        "the group's membership",
        || async {
            let ask = Ask {
                topic: topic.to_owned(),
                partitions: BTreeSet::from([0]),
            };
            let answers = probe.ask(BTreeMap::from([("acme".to_owned(), ask)])).await;
            answers
                .progress
                .group("acme")
                .is_some_and(|group| group.live == live)
        },
    )
    .await;
}

/// Against a Tansu broker process (`WAYBILL_TANSU_BIN`, installed by `scripts/test.sh`;
/// skipped with a message when there is none): the default handover deadline (10 min on the
/// test clock) passes while the partner's group is alive and has read half of each partition.
async fn a_partner_behind_or_holding_is_not_resent_one_that_left_is(backend: TestBackend) {
    waybill_test_kit::require!(
        std::env::var_os("WAYBILL_TANSU_BIN").is_some(),
        "WAYBILL_TANSU_BIN is not set (scripts/test.sh installs Tansu and sets it)"
    );
    const ORDERS: usize = 60;
    let h = Harness::with_broker(backend, TestBroker::tansu()).await;
    let partner = h.partner("acme", "DE", Span::seconds(600), 5).await;
    // One record per batch: Tansu 0.6 answers the latest offset of a partition with the base
    // offset of its last batch + 1, which is the log's end only when batches hold one record.
    let mut kafka = h.kafka();
    kafka
        .options
        .push(("batch.num.messages".to_owned(), "1".to_owned()));
    let relay = Relay::new(
        h.store.clone(),
        OrderProducer::new(&kafka).unwrap(),
        h.broker.topic_creator(),
        Arc::new(h.clock.clone()),
        h.db.feed().clone(),
        h.settings("dispatcher-a"),
        Arc::new(RelayMetrics::default()),
    );
    let probe = GroupProbe::new(&kafka, Duration::from_secs(2));
    let group = PartnerGroup::join(&h.broker, "acme", &partner.topic);
    let mut orders = Vec::new();
    for _ in 0..ORDERS {
        orders.push(h.place("DE", 100).await);
    }
    relay.run_cycle(true).await.unwrap();
    let on_topic = h
        .broker
        .read_topic(&partner.topic, ORDERS, Duration::from_secs(20))
        .await;
    assert_eq!(on_topic.len(), ORDERS);
    // Where each order landed, by partition in offset order.
    let mut partitions: HashMap<i32, Vec<(i64, Uuid)>> = HashMap::new();
    for record in &on_topic {
        partitions
            .entry(record.partition)
            .or_default()
            .push((record.offset, record.key.parse().unwrap()));
    }
    eventually(
        Duration::from_secs(60),
        "the partner's consumer reading",
        || async { group.received.load(Ordering::Relaxed) == ORDERS },
    )
    .await;

    // The partner has read, and confirmed, the first half of each partition.
    let (mut read, mut waiting) = (Vec::new(), Vec::new());
    for (&partition, records) in &mut partitions {
        records.sort();
        let half = records.len() / 2;
        if let Some(&(offset, _)) = records.get(half) {
            group.commit(partition, offset).await;
        }
        read.extend(records[..half].iter().map(|(_, id)| *id));
        waiting.extend(
            records[half..]
                .iter()
                .map(|(offset, id)| (partition, *offset, *id)),
        );
    }
    for id in &read {
        h.report(*id, "RECEIVED_BY_PARTNER", "acme").await;
    }
    // (Tansu lists a group only once it has committed offsets: after the commits.)
    group_live(&probe, &partner.topic, true).await;

    h.clock.advance(Span::seconds(600));
    assert_eq!(relay.run_cycle(true).await.unwrap().overdue, ORDERS);

    let metrics = relay.metrics().snapshot();
    eprintln!(
        "partner behind at the default handover deadline: {} of {ORDERS} orders re-sent ({} \
         waiting, their deadlines moved on)",
        metrics.resent, metrics.handover_extended
    );
    assert_eq!(metrics.resent, 0, "no re-send while the partner is behind");
    assert_eq!(metrics.handover_extended, waiting.len() as u64);
    assert_eq!(metrics.acknowledged, read.len() as u64);
    for &(_, _, id) in &waiting {
        let row = h.dispatch(id).await;
        assert_eq!((row.state, row.resends), (DispatchState::Sent, 0));
        assert_eq!(row.ack_due_at, Some(h.clock_now() + Span::seconds(600)));
    }

    // It reads one more without confirming it (its connector holds it, the report is late):
    // that one is not sent again either, and the rest still wait.
    let (partition, offset, unconfirmed) = waiting.remove(0);
    group.commit(partition, offset + 1).await;
    h.clock.advance(Span::seconds(600));
    relay.run_cycle(true).await.unwrap();
    let row = h.dispatch(unconfirmed).await;
    assert_eq!((row.state, row.resends), (DispatchState::Sent, 0), "held");
    assert_eq!(row.ack_due_at, Some(h.clock_now() + Span::seconds(600)));
    for &(_, _, id) in &waiting {
        assert_eq!(h.dispatch(id).await.resends, 0, "still behind");
    }
    assert_eq!(relay.metrics().snapshot().resent, 0);

    // The partner's connector stops: every order it has not confirmed is sent again.
    group.leave();
    group_live(&probe, &partner.topic, false).await;
    h.clock.advance(Span::seconds(600));
    relay.run_cycle(true).await.unwrap();
    for &(_, _, id) in &waiting {
        let row = h.dispatch(id).await;
        assert_eq!((row.state, row.resends), (DispatchState::Sent, 1), "gone");
    }
    assert_eq!(h.dispatch(unconfirmed).await.resends, 1);
    let on_topic = h
        .broker
        .read_topic(&partner.topic, ORDERS * 2, Duration::from_secs(5))
        .await;
    assert_eq!(on_topic.len(), ORDERS + waiting.len() + 1);
}
