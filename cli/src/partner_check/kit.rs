//! Waybill's Kafka side for `waybill partner-check`: the embedded broker `waybill dev` uses
//! (librdkafka's mock cluster, reachable over TCP by the adapter's process), the partner's
//! topic, the records the dispatcher writes (its own encoders: [`dispatched_payload`],
//! [`order_message`]), and the group's committed offsets as Waybill reads them.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use chrono::{TimeZone as _, Utc};
use rand::{Rng as _, rngs::StdRng};
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use uuid::Uuid;
use waybill_dispatcher::{
    domain::model::{LeasedOrder, ShipTo},
    embedded::EmbeddedBroker,
    kafka::messages::{Origin, dispatched_payload, order_message},
};
use waybill_proto::{
    headers,
    outbox::{StoredLine, StoredOrder},
    v1::{Address, DispatchState, Recipient},
};

/// Partitions of each scenario's topic (Waybill's default is 6; fewer keeps a run short).
pub const PARTITIONS: i32 = 2;

/// One order the kit sends, made from the seed.
#[derive(Debug, Clone)]
pub struct TestOrder {
    /// The order id (a UUID made from the seed).
    pub id: String,
    /// The order as the outbox stores it.
    pub stored: StoredOrder,
}

impl TestOrder {
    /// An order to `country`, with `line2` as its address line 2 (sandbox markers).
    pub fn new(rng: &mut StdRng, line2: &str) -> Self {
        let id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
        let quantity = rng.random_range(1..=3u32);
        let unit = rng.random_range(500..=5_000i64);
        let stored = StoredOrder {
            order_id: id.to_string(),
            placed_at: Utc
                .timestamp_opt(1_790_000_000 + rng.random_range(0..1_000_000), 0)
                .single()
                .unwrap_or_else(Utc::now),
            ship_to: Address {
                line1: format!("{} Check Street", rng.random_range(1..=999u32)),
                line2: line2.to_owned(),
                city: "Springfield".to_owned(),
                region: String::new(),
                postal_code: format!("{:05}", rng.random_range(10_000..99_999u32)),
                country_code: "DE".to_owned(),
            },
            lines: vec![StoredLine {
                sku: "MUG-001".to_owned(),
                name: "Mug".to_owned(),
                quantity,
                unit_price_minor: unit,
                line_total_minor: unit * i64::from(quantity),
            }],
            currency_code: "EUR".to_owned(),
            total_minor: unit * i64::from(quantity),
            recipient: Recipient {
                name: "Ada Check".to_owned(),
                email: "ada@example.com".to_owned(),
                phone: String::new(),
            },
        };
        Self {
            id: id.to_string(),
            stored,
        }
    }
}

/// One record to produce.
#[derive(Debug, Clone)]
pub struct Record {
    /// The record key.
    pub key: String,
    /// The value.
    pub payload: Vec<u8>,
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// The partition it goes to.
    pub partition: i32,
}

/// Where a copy says it comes from.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    /// The partner it is for.
    pub partner_id: &'a str,
    /// The region's name.
    pub region: &'a str,
    /// The region's StatusIngest address.
    pub reply_to: &'a str,
}

/// The dispatcher's record of `order`'s `send_count`-th send, exactly as the relay writes it.
pub fn order_record(
    order: &TestOrder,
    send_count: i32,
    from: Sender<'_>,
    partition: i32,
) -> Record {
    let message = order.stored.stored_message();
    let leased = LeasedOrder {
        order_id: Uuid::parse_str(&order.id).unwrap_or_default(),
        state: DispatchState::Pending,
        attempts: 0,
        resends: send_count - 1,
        partner_id: Some(from.partner_id.to_owned()),
        acknowledged: false,
        sent_at: None,
        sent_position: None,
        rejected_partners: Vec::new(),
        traceparent: format!(
            "00-{}-{}-01",
            order.id.replace('-', ""),
            &order.id.replace('-', "")[..16]
        ),
        tracestate: String::new(),
        message,
        ship_to: ShipTo::default(),
        currency_code: order.stored.currency_code.clone(),
        total_minor: order.stored.total_minor,
    };
    let origin = Origin {
        region: from.region,
        reply_to: from.reply_to,
    };
    let payload = dispatched_payload(&leased, from.partner_id, send_count, origin);
    let message = order_message(&leased, payload, String::new(), false, origin);
    Record {
        key: message.key,
        payload: message.payload,
        headers: message
            .headers
            .into_iter()
            .map(|(name, value)| (name.into_owned(), value))
            .collect(),
        partition,
    }
}

/// A record whose value is not a `DispatchedOrder` (headers all right).
pub fn undecodable_record(order: &TestOrder, from: Sender<'_>, partition: i32) -> Record {
    let mut record = order_record(order, 1, from, partition);
    // A field 1 of wire type 7 (no such type): no protobuf decoder accepts it.
    record.payload = vec![0x0f, 0xff, 0xff, 0xff, 0x01, 0x02];
    record
}

/// A good record of a schema version nobody announced.
pub fn unknown_version_record(order: &TestOrder, from: Sender<'_>, partition: i32) -> Record {
    let mut record = order_record(order, 1, from, partition);
    for (name, value) in &mut record.headers {
        if name == headers::SCHEMA_VERSION_HEADER {
            *value = "99".to_owned();
        }
    }
    record
}

/// The broker and a producer on it.
pub struct Broker {
    // Dropped before the broker it talks to.
    producer: FutureProducer,
    embedded: EmbeddedBroker,
}

impl Broker {
    /// Starts the embedded broker.
    pub fn start() -> anyhow::Result<Self> {
        let embedded =
            EmbeddedBroker::start().map_err(|e| anyhow!("cannot start the broker: {e}"))?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", embedded.bootstrap_servers())
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", "10000")
            .create()
            .context("cannot create the kit's producer")?;
        Ok(Self { embedded, producer })
    }

    /// The address the adapter connects to.
    pub fn bootstrap(&self) -> &str {
        self.embedded.bootstrap_servers()
    }

    /// Creates `topic` and its dead-letter topic.
    pub fn create_topic(&self, topic: &str) -> anyhow::Result<()> {
        for name in [topic.to_owned(), format!("{topic}.dead-letter")] {
            self.embedded
                .create_topic(&name, PARTITIONS)
                .map_err(|e| anyhow!("cannot create topic {name}: {e}"))?;
        }
        Ok(())
    }

    /// Produces `record` to `topic`, waiting for the broker's acknowledgement.
    pub async fn produce(&self, topic: &str, record: &Record) -> anyhow::Result<()> {
        let mut headers = OwnedHeaders::new();
        for (name, value) in &record.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let message = FutureRecord::to(topic)
            .key(&record.key)
            .payload(&record.payload)
            .partition(record.partition)
            .headers(headers);
        self.producer
            .send(message, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow!("cannot produce to {topic}: {e}"))?;
        Ok(())
    }

    /// The group's committed offset per partition of `topic` (-1: none), and the log's end.
    pub fn positions(&self, group: &str, topic: &str) -> anyhow::Result<Vec<(i64, i64)>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .context("cannot create the offsets reader")?;
        let mut list = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            list.add_partition(topic, partition);
        }
        let committed = consumer
            .committed_offsets(list, Duration::from_secs(5))
            .context("cannot read the group's committed offsets")?;
        let mut positions = Vec::new();
        for partition in 0..PARTITIONS {
            let committed =
                committed
                    .find_partition(topic, partition)
                    .map_or(-1, |p| match p.offset() {
                        Offset::Offset(offset) => offset,
                        _ => -1,
                    });
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(5))
                .context("cannot read the log's end")?;
            positions.push((committed, high));
        }
        Ok(positions)
    }
}
