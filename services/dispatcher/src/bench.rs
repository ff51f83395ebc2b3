//! `waybill bench drain`: fills the outbox with N orders and measures how fast one dispatcher
//! (or several side by side) drains them — the real relay loops, exactly as
//! `waybill dispatcher` runs them: lease → route → produce → record with batches in flight,
//! order-events publishing alongside — and, in the same run against the same broker, how fast
//! the same messages can merely be produced: the limit the relay is measured against.
//!
//! The drain ends when bookkeeping has committed every bench order. Run it against a dedicated
//! database: the relay drains every due row (and publishes every pending event) it finds, and
//! the bench partner's route (a unique postal prefix at the highest priority) only keeps real
//! routes from catching the bench orders.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use waybill_service_kit::{
    clock::{SharedClock, SystemClock},
    db::Database,
};

use crate::{
    config::RelaySettings,
    domain::model::{LeasedOrder, OrderLine, PartnerRecord, RouteRecord, ShipTo},
    error::DispatchError,
    kafka::{
        KafkaSettings, TopicCreator, TopicNames,
        messages::{Origin, OutgoingMessage, dispatched_order, order_message},
        producer::OrderProducer,
    },
    metrics::RelayMetrics,
    outbox_fixture::{FixtureOrder, insert_orders},
    relay::Relay,
    store::for_database,
};

/// What to measure.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    /// Orders to place and drain.
    pub orders: usize,
    /// Relay batch size.
    pub batch_size: u32,
    /// Batches each dispatcher works on at once.
    pub batches_in_flight: u32,
    /// Dispatchers draining side by side (each its own relay, producer and lease owner).
    pub dispatchers: u32,
    /// Partner topic prefix.
    pub topic_prefix: String,
    /// Give up when a drain takes longer than this.
    pub timeout: Duration,
}

impl Default for DrainOptions {
    fn default() -> Self {
        Self {
            orders: 10_000,
            batch_size: 500,
            batches_in_flight: RelaySettings::default().batches_in_flight,
            dispatchers: 1,
            topic_prefix: "waybill.bench.".to_owned(),
            timeout: Duration::from_secs(600),
        }
    }
}

/// The figures of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DrainReport {
    /// Orders drained.
    pub orders: usize,
    /// Relay batch size.
    pub batch_size: u32,
    /// Batches each dispatcher works on at once.
    pub batches_in_flight: u32,
    /// Dispatchers draining side by side.
    pub dispatchers: u32,
    /// Seconds to write the orders into the outbox.
    pub fill_seconds: f64,
    /// Seconds one dispatcher took to drain them.
    pub drain_seconds: f64,
    /// Orders per second drained.
    pub drain_orders_per_second: f64,
    /// Seconds to produce the same messages without any database work.
    pub produce_seconds: f64,
    /// Messages per second produced: the limit.
    pub produce_messages_per_second: f64,
    /// Drain rate as a share of the produce rate.
    pub drain_vs_produce: f64,
    /// History events the dispatchers put on the order-events topic during the drain.
    pub events_published: u64,
    /// Produce latency p50 during the drain, milliseconds.
    pub produce_latency_p50_ms: f64,
    /// Produce latency p99 during the drain, milliseconds.
    pub produce_latency_p99_ms: f64,
    /// The topic used.
    pub topic: String,
}

impl DrainReport {
    /// A few lines for people.
    pub fn to_text(&self) -> String {
        format!(
            "bench drain: {orders} orders, {dispatchers} dispatcher(s), batch {batch} × {in_flight} in flight, topic {topic}\n\
             fill      {fill:>8.2} s\n\
             drain     {drain:>8.2} s  {rate:>10.0} orders/s  (produce p50 {p50:.1} ms, p99 {p99:.1} ms; {events} events published meanwhile)\n\
             produce   {produce:>8.2} s  {prate:>10.0} msgs/s   (same messages, same broker, no database)\n\
             drain / produce: {ratio:.0}%",
            orders = self.orders,
            batch = self.batch_size,
            dispatchers = self.dispatchers,
            in_flight = self.batches_in_flight,
            events = self.events_published,
            topic = self.topic,
            fill = self.fill_seconds,
            drain = self.drain_seconds,
            rate = self.drain_orders_per_second,
            p50 = self.produce_latency_p50_ms,
            p99 = self.produce_latency_p99_ms,
            produce = self.produce_seconds,
            prate = self.produce_messages_per_second,
            ratio = self.drain_vs_produce * 100.0,
        )
    }

    /// The same as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Why the bench could not finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad options.
    #[error("{0}")]
    Invalid(String),
    /// Writing the outbox failed.
    #[error("cannot fill the outbox: {0}")]
    Fill(#[from] sqlx::Error),
    /// The relay failed.
    #[error(transparent)]
    Relay(#[from] DispatchError),
    /// The producer could not be built.
    #[error("cannot build the kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Producing failed during the raw-produce measurement.
    #[error("raw produce failed: {0}")]
    Produce(String),
    /// The drain did not finish in time.
    #[error("drained {drained} of {orders} orders before the {timeout:?} timeout")]
    Timeout {
        /// Orders drained.
        drained: usize,
        /// Orders placed.
        orders: usize,
        /// The limit.
        timeout: Duration,
    },
}

/// Runs `bench drain` on `db` (a dedicated database) and the brokers of `kafka`; `topics`
/// creates the bench partner's topic.
pub async fn drain(
    db: &Database,
    kafka: &KafkaSettings,
    topics: Arc<dyn TopicCreator>,
    options: &DrainOptions,
) -> Result<DrainReport, BenchError> {
    if options.orders == 0
        || options.batch_size == 0
        || options.batches_in_flight == 0
        || options.dispatchers == 0
    {
        return Err(BenchError::Invalid(
            "orders, batch size, batches in flight and dispatchers must be positive".to_owned(),
        ));
    }
    let store = for_database(db);
    let clock: SharedClock = Arc::new(SystemClock);
    let run = Uuid::new_v4().simple().to_string();
    let partner_id = format!("bench-{}", &run[..8]);
    let postal_prefix = format!("B{}", &run[..8]).to_ascii_uppercase();
    let names = TopicNames {
        partner_prefix: options.topic_prefix.clone(),
        ..TopicNames::default()
    };
    let topic = names.partner_topic(&partner_id);
    topics
        .ensure_topic(&topic)
        .await
        .map_err(DispatchError::from)?;
    let now = clock.now();
    store
        .upsert_partner(&PartnerRecord {
            id: partner_id.clone(),
            display_name: "bench".to_owned(),
            enabled: true,
            handover_deadline: chrono::Duration::days(1),
            resend_budget: 0,
            topic: topic.clone(),
            created_at: now,
            updated_at: now,
        })
        .await
        .map_err(DispatchError::from)?;
    store
        .set_route(
            &RouteRecord {
                id: partner_id.clone(),
                partner_id: partner_id.clone(),
                country_code: "DE".to_owned(),
                region: String::new(),
                postal_prefix: postal_prefix.clone(),
                priority: i32::MIN,
                enabled: true,
            },
            now,
        )
        .await
        .map_err(DispatchError::from)?;

    let placed_at = clock.now() - chrono::Duration::seconds(1);
    let orders: Vec<FixtureOrder> = (0..options.orders)
        .map(|_| FixtureOrder {
            postal_code: format!("{postal_prefix}1"),
            ..FixtureOrder::new("DE", 4_999, placed_at)
        })
        .collect();
    let fill_started = Instant::now();
    insert_orders(db, &orders).await?;
    let fill = fill_started.elapsed();

    let settings = RelaySettings {
        instance_id: format!("bench-{run}"),
        topics: names,
        batch_size: options.batch_size,
        batches_in_flight: options.batches_in_flight,
        ..RelaySettings::default()
    };
    let producer = OrderProducer::new(kafka)?;
    // Connect and fetch the topic's metadata before the clock starts, as a running dispatcher
    // would have: the figure is the steady drain rate, not connection set-up.
    let warm_up = OutgoingMessage {
        topic: topic.clone(),
        key: "warm-up".to_owned(),
        payload: Vec::new(),
        headers: Vec::new(),
    };
    let mut relays = Vec::new();
    for n in 0..options.dispatchers {
        let producer = if n == 0 {
            producer.clone()
        } else {
            OrderProducer::new(kafka)?
        };
        if let Some(error) = producer
            .send_all(std::slice::from_ref(&warm_up))
            .await
            .into_iter()
            .find_map(Result::err)
        {
            return Err(BenchError::Produce(error.to_string()));
        }
        relays.push(Relay::new(
            store.clone(),
            producer,
            topics.clone(),
            clock.clone(),
            db.feed().clone(),
            RelaySettings {
                instance_id: format!("bench-{run}-{n}"),
                ..settings.clone()
            },
            Arc::new(RelayMetrics::default()),
        ));
    }
    let metrics: Vec<Arc<RelayMetrics>> = relays.iter().map(|r| r.metrics().clone()).collect();
    let recorded = || -> usize {
        metrics
            .iter()
            .map(|m| m.snapshot().recorded)
            .sum::<u64>()
            .try_into()
            .unwrap_or(usize::MAX)
    };

    let stop = CancellationToken::new();
    let drain_started = Instant::now();
    let running: Vec<_> = relays
        .into_iter()
        .map(|relay| tokio::spawn(relay.run(stop.clone(), Duration::from_secs(5))))
        .collect();
    let mut drained = recorded();
    while drained < options.orders && drain_started.elapsed() <= options.timeout {
        // The relays run on their own tasks; this only watches their counters.
        tokio::time::sleep(Duration::from_millis(1)).await;
        drained = recorded();
    }
    let drain = drain_started.elapsed();
    stop.cancel();
    for relay in running {
        // A relay task that panicked has nothing left to release; the figures stand or fall
        // with the count below.
        let _ = relay.await;
    }
    if drained < options.orders {
        return Err(BenchError::Timeout {
            drained,
            orders: options.orders,
            timeout: options.timeout,
        });
    }

    // The same messages (same size and headers), produced in batches of the same size.
    let origin = Origin {
        region: &settings.region,
        reply_to: &settings.reply_to,
    };
    let messages: Vec<OutgoingMessage> = orders
        .iter()
        .map(|order| {
            let leased = leased_copy(order);
            let payload = dispatched_order(&leased, &partner_id, 1, origin);
            order_message(&leased, &payload, topic.clone(), false, origin)
        })
        .collect();
    let produce_started = Instant::now();
    for chunk in messages.chunks(options.batch_size as usize) {
        if let Some(error) = producer
            .send_all(chunk)
            .await
            .into_iter()
            .find_map(Result::err)
        {
            return Err(BenchError::Produce(error.to_string()));
        }
    }
    let produce = produce_started.elapsed();

    let snapshots: Vec<_> = metrics.iter().map(|m| m.snapshot()).collect();
    let snapshot = &snapshots[0];
    let events_published = snapshots.iter().map(|s| s.events_published).sum();
    let drain_rate = options.orders as f64 / drain.as_secs_f64().max(1e-9);
    let produce_rate = messages.len() as f64 / produce.as_secs_f64().max(1e-9);
    Ok(DrainReport {
        orders: options.orders,
        batch_size: options.batch_size,
        batches_in_flight: options.batches_in_flight,
        dispatchers: options.dispatchers,
        fill_seconds: fill.as_secs_f64(),
        drain_seconds: drain.as_secs_f64(),
        drain_orders_per_second: drain_rate,
        produce_seconds: produce.as_secs_f64(),
        produce_messages_per_second: produce_rate,
        drain_vs_produce: drain_rate / produce_rate.max(1e-9),
        events_published,
        produce_latency_p50_ms: snapshot.produce_latency_p50.as_secs_f64() * 1_000.0,
        produce_latency_p99_ms: snapshot.produce_latency_p99.as_secs_f64() * 1_000.0,
        topic,
    })
}

/// The leased form of a fixture order, as the relay would read it back.
fn leased_copy(order: &FixtureOrder) -> LeasedOrder {
    LeasedOrder {
        order_id: order.id,
        state: waybill_proto::v1::DispatchState::Pending,
        attempts: 0,
        resends: 0,
        partner_id: None,
        acknowledged: false,
        rejected_partners: Vec::new(),
        traceparent: order.traceparent.clone(),
        tracestate: String::new(),
        placed_at: order.placed_at,
        customer_id: "customer-1".to_owned(),
        customer_name: "Ada Lovelace".to_owned(),
        customer_email: "ada@example.com".to_owned(),
        customer_phone: "+441234".to_owned(),
        ship_to: ShipTo {
            line1: "1 Main St".to_owned(),
            line2: String::new(),
            city: "Springfield".to_owned(),
            region: order.region.clone(),
            postal_code: order.postal_code.clone(),
            country_code: order.country_code.clone(),
        },
        currency_code: order.currency_code.clone(),
        total_minor: order.total_minor,
        region: "test".to_owned(),
        lines: vec![OrderLine {
            sku: "SKU-1".to_owned(),
            name: "Widget".to_owned(),
            quantity: 1,
            unit_price_minor: order.total_minor,
            line_total_minor: order.total_minor,
        }],
    }
}
