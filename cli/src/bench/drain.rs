//! `waybill bench drain`: how fast one dispatcher (or several side by side) drains a full
//! outbox, next to the limit measured on the same database in the same run.
//!
//! The database side (fill, limit, count) is in `outbox.rs`, the limit's two runs in `limit.rs`.
//!
//! 1. **Fill.** Orders are placed through the Orders store itself (the placing write Orders
//!    runs for `PlaceOrder`), so the outbox rows are exactly what production writes: `--orders`
//!    for the drain, and twice `--limit-orders` for the limit, placed an hour earlier and an
//!    hour later.
//! 2. **The limit.** On one connection, plain SQL does the bookkeeping the relay cannot avoid,
//!    1,000 orders at a time: lease due rows (`FOR UPDATE SKIP LOCKED`), mark them `SENT` and
//!    append one `SENT_TO_PARTNER` event each. It runs right before the drain on the hour-older
//!    rows (due first) and right after it on the hour-later ones (not due for the drain), so
//!    it never touches the drain's orders and the machine's drift falls on both; the limit is
//!    the two runs together.
//! 3. **The drain.** The real relay loops, exactly as `waybill dispatcher` runs them (lease →
//!    produce → record, batches in flight, order events published alongside). An order counts
//!    as drained once it is recorded `SENT` and its `SENT_TO_PARTNER` event is on the
//!    order-events topic; the counts are checked against the database at the end.
//! 4. **The broker alone.** The same messages produced with no database work, for context.
//!
//! Each measured phase (the limit before, the drain, the limit after) starts right after a
//! `CHECKPOINT` (Postgres), so that no phase alone pays for a checkpoint the fill set off, and
//! the steal time the host took during each phase is reported (Linux).
//!
//! The ratio drain / limit is the figure to judge a change by: these machines vary from run to
//! run by a third, a ratio measured in one run does not. Run it against a dedicated database:
//! the relay drains every due row it finds there.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use waybill_dispatcher::{
    RelaySettings,
    embedded::EmbeddedBroker,
    kafka::{
        AdminTopicCreator, KafkaSettings, TopicCreator, TopicNames, messages::OutgoingMessage,
        producer::OrderProducer,
    },
    metrics::RelayMetrics,
    relay::Relay,
};
use waybill_proto::v1::DispatchState;
use waybill_service_kit::{
    clock::{SharedClock, SystemClock},
    db::{Backend, Database, PoolSettings},
};

use super::{
    limit::{BenchRoute, BookkeepingLimit},
    measure::{Rate, host_steal_seconds, mib_text, peak_rss_mib, process_cpu_seconds, redact},
    outbox::{count_sent, place},
    prefill::{Prefill, prefill},
};

/// How far from the drain's orders the limit's are placed: before them (the limit before the
/// drain) and after them (the limit after it, out of the drain's way until then).
const LIMIT_AHEAD: chrono::Duration = chrono::Duration::hours(1);

/// Settings of `waybill bench drain`.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// Storage to fill and drain (use a dedicated database: the bench adds a partner and orders,
    /// and the relay drains every due row it finds).
    #[arg(
        long,
        env = "WAYBILL_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// A Kafka broker (`host:port,…`); without it an embedded in-memory broker is used.
    #[arg(long, env = "WAYBILL_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Orders to place and drain (the embedded broker keeps 5 MiB per partition: stay under
    /// about 20,000 with it, and use a broker process for more).
    #[arg(long, short = 'n', default_value_t = 10_000)]
    orders: usize,
    /// Orders the bare-SQL limit is measured on (Postgres), in thousands-sized batches: as
    /// many right before the drain and again right after it.
    #[arg(long, default_value_t = 20_000)]
    limit_orders: usize,
    /// Relay batch size.
    #[arg(long, default_value_t = RelaySettings::default().batch_size)]
    batch_size: u32,
    /// Batches each dispatcher works on at once.
    #[arg(long, default_value_t = RelaySettings::default().batches_in_flight)]
    batches_in_flight: u32,
    /// History events each dispatcher publishes together.
    #[arg(long, default_value_t = RelaySettings::default().event_batch_size)]
    event_batch_size: u32,
    /// Dispatchers draining side by side (each its own relay, producer and lease owner).
    #[arg(long, default_value_t = 1)]
    dispatchers: u32,
    /// Finished orders to have in the database before the run (Postgres): written once with
    /// plain SQL and kept, so the figures show whether draining slows as the tables grow.
    #[arg(long, default_value_t = 0)]
    prefill: u64,
    /// Give up when the drain takes longer than this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct DrainReport {
    benchmark: &'static str,
    storage: String,
    broker: String,
    orders: usize,
    batch_size: u32,
    batches_in_flight: u32,
    event_batch_size: u32,
    dispatchers: u32,
    /// Orders already in the database (`--prefill`).
    prefill: Option<Prefill>,
    /// Seconds to place the orders (drain and limit) through the Orders store.
    fill_seconds: f64,
    /// The bare bookkeeping on one connection (Postgres only; `null` on SQLite): both runs,
    /// right before and right after the drain, together.
    limit: Option<Rate>,
    /// The two runs of the limit apart, to show how far the machine drifted meanwhile.
    limit_before: Option<Rate>,
    limit_after: Option<Rate>,
    /// The relay: every order recorded `SENT` with its events published.
    drain: Rate,
    /// Seconds until every order was recorded `SENT` (events may still be on their way).
    recorded_seconds: Option<f64>,
    /// `drain / limit`.
    ratio: Option<f64>,
    /// The same partner messages produced with no database work.
    broker_only: Rate,
    /// History events the dispatchers published during the drain.
    events_published: u64,
    produce_latency_p50_ms: f64,
    produce_latency_p99_ms: f64,
    /// Peak resident set size of this process up to the end of the drain (the relays and
    /// their producers, the fill through the Orders store, the embedded broker if any), MiB.
    peak_rss_mib: Option<f64>,
    /// CPU seconds this process used during the drain (the relays, their producers and, with
    /// no broker given, the embedded broker): the dispatcher's share of the machine.
    drain_cpu_seconds: Option<f64>,
    /// Whether each measured phase started right after a checkpoint (Postgres; see
    /// `outbox::checkpoint`).
    checkpointed: Option<bool>,
    /// CPU seconds the host took from this machine during each phase (Linux; `null` for a
    /// phase not measured): a run with much of it measured the host as much as the build.
    steal_seconds: PhaseSteal,
}

/// Steal time per measured phase, seconds over all CPUs.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PhaseSteal {
    limit_before: Option<f64>,
    drain: Option<f64>,
    limit_after: Option<f64>,
}

impl DrainReport {
    fn to_text(&self) -> String {
        let limit = match (
            &self.limit,
            self.ratio,
            &self.limit_before,
            &self.limit_after,
        ) {
            (Some(limit), Some(ratio), Some(before), Some(after)) => format!(
                "limit     {:>8.2} s  {:>10.0} orders/s  (bare SQL bookkeeping, one connection: \
                 {:.0} orders/s before the drain, {:.0} after)\n\
                 drain / limit: {:.0}%",
                limit.seconds,
                limit.orders_per_second,
                before.orders_per_second,
                after.orders_per_second,
                ratio * 100.0
            ),
            _ => "limit     not measured (the bare-SQL limit is defined on Postgres)".to_owned(),
        };
        format!(
            "bench drain: {orders} orders, {dispatchers} dispatcher(s), batch {batch} × {in_flight} in flight\n  \
             storage {storage}, broker {broker}{prefill}\n\
             fill      {fill:>8.2} s\n\
             drain     {drain:>8.2} s  {rate:>10.0} orders/s  (all recorded SENT after {recorded}; produce p50 {p50:.1} ms, p99 {p99:.1} ms; {events} events published)\n\
             {limit}\n\
             broker    {produce:>8.2} s  {prate:>10.0} msgs/s   (same messages, no database)\n\
             peak RSS  {rss}{steal}",
            orders = self.orders,
            dispatchers = self.dispatchers,
            batch = self.batch_size,
            in_flight = self.batches_in_flight,
            storage = self.storage,
            broker = self.broker,
            prefill = self.prefill.map_or_else(String::new, |p| format!(
                ", {} finished orders already in the database",
                p.orders
            )),
            fill = self.fill_seconds,
            drain = self.drain.seconds,
            rate = self.drain.orders_per_second,
            recorded = self
                .recorded_seconds
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.2} s")),
            p50 = self.produce_latency_p50_ms,
            p99 = self.produce_latency_p99_ms,
            events = self.events_published,
            produce = self.broker_only.seconds,
            prate = self.broker_only.orders_per_second,
            rss = mib_text(self.peak_rss_mib),
            steal = self.steal_seconds.drain.map_or_else(String::new, |drain| {
                let limit =
                    |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |s| format!("{s:.1} s"));
                format!(
                    "\nsteal     {} before, {drain:.1} s during the drain, {} after (CPU time \
                     the host took from this machine)",
                    limit(self.steal_seconds.limit_before),
                    limit(self.steal_seconds.limit_after),
                )
            }),
        )
    }
}

/// Runs `waybill bench drain`.
pub async fn run(args: DrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.orders > 0
            && args.batch_size > 0
            && args.batches_in_flight > 0
            && args.event_batch_size > 0
            && args.dispatchers > 0,
        "--orders, --batch-size, --batches-in-flight, --event-batch-size and --dispatchers must \
         be positive"
    );
    let shutdown = CancellationToken::new();
    let pool = PoolSettings {
        max_connections: 16,
        ..PoolSettings::default()
    };
    let db = Database::connect(&args.database_url, &pool, shutdown.clone())
        .await
        .context("cannot open the bench database")?;
    // The embedded broker, when there is no other, lives until the bench ends.
    let (kafka, topics, broker, _embedded): (
        KafkaSettings,
        Arc<dyn TopicCreator>,
        String,
        Option<EmbeddedBroker>,
    ) = match &args.kafka_brokers {
        Some(brokers) => {
            let kafka = KafkaSettings::new(brokers.clone());
            let creator = Arc::new(AdminTopicCreator::new(&kafka)?);
            (kafka, creator, brokers.clone(), None)
        }
        None => {
            let embedded = EmbeddedBroker::start()
                .map_err(|e| anyhow::anyhow!("cannot start the embedded broker: {e}"))?;
            (
                KafkaSettings::new(embedded.bootstrap_servers().to_owned()),
                embedded.topic_creator(),
                "embedded".to_owned(),
                Some(embedded),
            )
        }
    };
    let result = drain(&db, &kafka, topics, &args).await;
    shutdown.cancel();
    db.close().await;
    let mut report = result?;
    report.storage = redact(&args.database_url);
    report.broker = broker;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.to_text());
    }
    Ok(())
}

async fn drain(
    db: &Database,
    kafka: &KafkaSettings,
    topics: Arc<dyn TopicCreator>,
    args: &DrainArgs,
) -> anyhow::Result<DrainReport> {
    let store = waybill_dispatcher::store::for_database(db);
    let clock: SharedClock = Arc::new(SystemClock);
    let run = Uuid::new_v4().simple().to_string();
    let names = TopicNames {
        partner_prefix: "waybill.bench.".to_owned(),
        ..TopicNames::default()
    };
    let now = clock.now();
    let route = BenchRoute::enrol(&store, &names, &run, now).await?;
    let topic = route.topic.clone();
    topics.ensure_topic(&topic).await?;

    // Fill: the limit's orders an hour earlier (due first), then the drain's. Postgres takes
    // placing transactions side by side; SQLite has one writer.
    let (postgres, in_flight) = match db.backend() {
        Backend::Postgres(pool) => (Some(pool.clone()), 12),
        Backend::Sqlite(_) => (None, 1),
    };
    // Other due rows would be drained too and counted as this run's progress.
    let waiting: i64 = store
        .backlog(now)
        .await?
        .by_state
        .iter()
        .filter(|(state, _)| matches!(state, DispatchState::Pending | DispatchState::Retrying))
        .map(|(_, rows)| rows)
        .sum();
    anyhow::ensure!(
        waiting == 0,
        "the database holds {waiting} due orders that are not this run's: run the bench on a \
         dedicated database (or let a dispatcher drain them first)"
    );
    let prefilled = match (&postgres, args.prefill) {
        (_, 0) => None,
        (Some(pool), target) => Some(prefill(pool, target).await?),
        (None, _) => anyhow::bail!("--prefill needs Postgres"),
    };
    let customer = format!("bench-{run}");
    let fill_started = Instant::now();
    // The limit runs right before the drain on orders placed an hour earlier (due first), and
    // right after it on orders placed in an hour's time (not due for the drain): the machine's
    // drift during the run falls on the limit as on the drain.
    let mut limit = match &postgres {
        Some(pool) => Some(
            BookkeepingLimit::place(
                db,
                pool,
                &route,
                &run,
                &customer,
                args.limit_orders,
                in_flight,
                LIMIT_AHEAD,
                now,
            )
            .await?,
        ),
        None => None,
    };
    place(
        db,
        &run,
        &customer,
        &route.postal_prefix,
        now - chrono::Duration::seconds(1),
        args.orders,
        in_flight,
    )
    .await?;
    let fill = fill_started.elapsed();

    // Each measured phase starts right after a checkpoint (Postgres).
    let mut steal = PhaseSteal::default();
    let limit_before = match &mut limit {
        Some(limit) => Some(limit.before(&mut steal.limit_before).await?),
        None => None,
    };

    let settings = RelaySettings {
        topics: names,
        batch_size: args.batch_size,
        batches_in_flight: args.batches_in_flight,
        event_batch_size: args.event_batch_size,
        ..RelaySettings::default()
    };
    // Connect and fetch the topic's metadata before the clock starts, as a running dispatcher
    // would have: the figure is the steady drain rate, not connection set-up.
    let warm_up = OutgoingMessage {
        topic: topic.clone(),
        key: "warm-up".to_owned(),
        payload: Vec::new(),
        headers: Vec::new(),
    };
    let mut relays = Vec::new();
    for n in 0..args.dispatchers {
        let producer = OrderProducer::new(kafka)?;
        if let Some(error) = producer
            .send_all(std::slice::from_ref(&warm_up))
            .await
            .into_iter()
            .find_map(Result::err)
        {
            anyhow::bail!("cannot produce to {topic}: {error}");
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
    // Drained: every order recorded SENT, and its PLACED and SENT_TO_PARTNER events published.
    let progress = || {
        metrics.iter().fold((0, 0), |(r, p), m| {
            let s = m.snapshot();
            (r + s.recorded, p + s.events_published)
        })
    };
    let orders = args.orders as u64;
    if let Some(limit) = &mut limit {
        limit.checkpoint().await;
    }

    let stop = CancellationToken::new();
    let timeout = Duration::from_secs(args.timeout_secs);
    let drain_started = Instant::now();
    let cpu_before = process_cpu_seconds();
    let steal_before = host_steal_seconds();
    let running: Vec<_> = relays
        .into_iter()
        .map(|relay| tokio::spawn(relay.run(stop.clone(), Duration::from_secs(5))))
        .collect();
    let mut all_recorded = None;
    loop {
        let (recorded, published) = progress();
        if recorded >= orders && all_recorded.is_none() {
            all_recorded = Some(drain_started.elapsed());
        }
        if (recorded >= orders && published >= 2 * orders) || drain_started.elapsed() > timeout {
            break;
        }
        // The relays run on their own tasks; this only watches their counters.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let drain = drain_started.elapsed();
    let drain_cpu_seconds = cpu_before.zip(process_cpu_seconds()).map(|(a, b)| b - a);
    steal.drain = steal_before.zip(host_steal_seconds()).map(|(a, b)| b - a);
    stop.cancel();
    for relay in running {
        relay.await.context("a relay task failed")?;
    }
    let sent = count_sent(db, &customer).await?;
    anyhow::ensure!(
        sent == args.orders,
        "{sent} of {} orders were recorded SENT with their SENT_TO_PARTNER event within \
         {timeout:?}",
        args.orders
    );
    if let Some(since) = store.backlog(clock.now()).await?.oldest_unpublished_at {
        anyhow::bail!(
            "history events recorded since {since} are not on the order-events topic after \
             {timeout:?}"
        );
    }

    // The peak so far: filling, the limit and the drain (the broker-only run comes after).
    let peak_rss_mib = peak_rss_mib();
    let limit_after = match &mut limit {
        Some(limit) => Some(limit.after(&mut steal.limit_after).await?),
        None => None,
    };
    let checkpointed = limit.as_ref().and_then(BookkeepingLimit::checkpointed);
    let limit = limit_before.zip(limit_after).map(|(a, b)| a.plus(b));
    let broker_only = produce_only(kafka, &topic, args).await?;
    let snapshots: Vec<_> = metrics.iter().map(|m| m.snapshot()).collect();
    let drain = Rate::new(args.orders, drain);
    Ok(DrainReport {
        benchmark: "drain",
        storage: String::new(),
        broker: String::new(),
        orders: args.orders,
        batch_size: args.batch_size,
        batches_in_flight: args.batches_in_flight,
        event_batch_size: args.event_batch_size,
        dispatchers: args.dispatchers,
        prefill: prefilled,
        fill_seconds: fill.as_secs_f64(),
        ratio: limit.map(|limit| drain.orders_per_second / limit.orders_per_second.max(1e-9)),
        limit,
        limit_before,
        limit_after,
        drain,
        recorded_seconds: all_recorded.map(|at| at.as_secs_f64()),
        broker_only,
        events_published: snapshots.iter().map(|s| s.events_published).sum(),
        produce_latency_p50_ms: snapshots[0].produce_latency_p50.as_secs_f64() * 1_000.0,
        produce_latency_p99_ms: snapshots[0].produce_latency_p99.as_secs_f64() * 1_000.0,
        peak_rss_mib,
        drain_cpu_seconds,
        checkpointed,
        steal_seconds: steal,
    })
}

/// Produces `args.orders` messages the size of a bench order's to `topic`, in batches of the
/// relay's size, with no database work: what the broker alone allows.
async fn produce_only(
    kafka: &KafkaSettings,
    topic: &str,
    args: &DrainArgs,
) -> anyhow::Result<Rate> {
    let producer = OrderProducer::new(kafka)?;
    let message = |index: usize| OutgoingMessage {
        topic: topic.to_owned(),
        key: format!("{index:036}"),
        payload: vec![0x5a; BENCH_MESSAGE_BYTES],
        headers: Vec::new(),
    };
    let batch = args.batch_size as usize;
    let started = Instant::now();
    // One batch built at a time, as the relay holds them: the figure is the broker's.
    for first in (0..args.orders).step_by(batch) {
        let chunk: Vec<OutgoingMessage> = (first..args.orders.min(first + batch))
            .map(message)
            .collect();
        if let Some(error) = producer
            .send_all(&chunk)
            .await
            .into_iter()
            .find_map(Result::err)
        {
            anyhow::bail!("cannot produce to {topic}: {error}");
        }
    }
    Ok(Rate::new(args.orders, started.elapsed()))
}

/// About the encoded size of a bench order's `DispatchedOrder` with its headers.
const BENCH_MESSAGE_BYTES: usize = 600;
