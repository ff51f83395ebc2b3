//! `waybill bench e2e`: the whole loop in this process — Orders, the dispatcher, StatusIngest
//! and the example partner `distance-freight` — at a fixed offered rate.
//!
//! Open loop: order *i* is sent at `start + i / rate` whether or not earlier calls have
//! answered, so a slow system shows up as latency and as orders that fell behind the schedule
//! instead of as a lower offered rate. Measured per order, from the moment its `PlaceOrder`
//! response arrived:
//!
//! - **to the adapter**: until the partner's adapter is called with it (the relay's lease,
//!   produce, the broker, the SDK's consumer, inbox record);
//! - **to received**: until `RECEIVED_BY_PARTNER` is recorded on the order (`recorded_at`:
//!   the adapter's answer stored, signed, sent to StatusIngest and written).
//!
//! Plus `PlaceOrder`'s own latency, how many orders were sent more than 10 ms after their
//! scheduled time, and the process's peak resident set size.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use waybill_dispatcher::RelaySettings;
use waybill_proto::v1::{self as pb, OrderStatus, order_service_client::OrderServiceClient};

use crate::{
    bench::{Latency, new_histogram, peak_rss_mib, redact},
    system::{CallObserver, System, SystemSettings},
};

/// A send this late after its scheduled time counts as behind the schedule.
const BEHIND: Duration = Duration::from_millis(10);

/// Settings of `waybill bench e2e`.
#[derive(Debug, clap::Args)]
pub struct E2eArgs {
    /// Orders offered per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds to offer them for.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Storage (default: SQLite in a temporary directory); `postgres://…` for Postgres (use a
    /// dedicated database: the bench enrols the example partners and adds orders).
    #[arg(long, env = "WAYBILL_DATABASE_URL")]
    database_url: Option<String>,
    /// A Kafka broker (`host:port,…`); without it the embedded in-memory broker is used.
    #[arg(long, env = "WAYBILL_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// How long to wait, after the last order was placed, for every order to be received.
    #[arg(long, default_value_t = 60)]
    drain_timeout_secs: u64,
    /// Print one JSON object on the last line of stdout instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct E2eReport {
    benchmark: &'static str,
    storage: String,
    broker: String,
    rate_per_s: f64,
    duration_s: f64,
    offered: u64,
    placed: u64,
    errors: u64,
    behind_schedule: u64,
    max_behind_ms: f64,
    at_adapter: u64,
    received: u64,
    /// Orders whose adapter was called more than once (an order taken into effect twice).
    adapter_repeats: u64,
    /// Orders recorded as received whose adapter was never called.
    received_without_call: u64,
    /// Whether the run's ledger failed to balance: its figures then mean nothing.
    void: bool,
    place_ms: Latency,
    to_adapter_ms: Latency,
    to_received_ms: Latency,
    peak_rss_mib: Option<f64>,
}

/// One placed order and when it was scheduled to be sent: every latency counts from there,
/// so a load generator that falls behind cannot hide its own delay.
struct Placed {
    order_id: String,
    scheduled: Instant,
    scheduled_at: DateTime<Utc>,
}

/// The adapter's calls for one order: when the first came, and how many there were.
#[derive(Debug, Clone, Copy)]
struct Calls {
    first: Instant,
    count: u32,
}

/// Runs the benchmark.
pub async fn run(args: E2eArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0.0 && args.rate <= 100_000.0,
        "--rate must be above 0 and at most 100000 orders per second"
    );
    anyhow::ensure!(
        args.duration > 0.0 && args.duration <= 3600.0,
        "--duration must be above 0 and at most 3600 seconds"
    );
    let dir = std::env::temp_dir().join(format!("waybill-bench-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = run_in(&args, dir.clone()).await;
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "e2e: {} orders offered at {}/s for {} s on {} + {}\n  placed {} ({} errors), {} behind schedule (max {:.1} ms late)\n  scheduled → placed     p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n  scheduled → adapter    p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} called)\n  scheduled → received   p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} recorded)\n  ledger: {} orders called twice, {} received without a call{}\n  peak RSS {}",
            report.offered,
            report.rate_per_s,
            report.duration_s,
            report.storage,
            report.broker,
            report.placed,
            report.errors,
            report.behind_schedule,
            report.max_behind_ms,
            report.place_ms.p50,
            report.place_ms.p99,
            report.place_ms.max,
            report.to_adapter_ms.p50,
            report.to_adapter_ms.p99,
            report.to_adapter_ms.max,
            report.at_adapter,
            report.to_received_ms.p50,
            report.to_received_ms.p99,
            report.to_received_ms.max,
            report.received,
            report.adapter_repeats,
            report.received_without_call,
            if report.void {
                ": VOID, the figures above mean nothing"
            } else {
                ""
            },
            report
                .peak_rss_mib
                .map_or_else(|| "unknown".to_owned(), |mib| format!("{mib:.1} MiB")),
        );
    }
    anyhow::ensure!(
        !report.void,
        "void: the ledger does not balance ({} orders called twice, {} received without a call)",
        report.adapter_repeats,
        report.received_without_call
    );
    anyhow::ensure!(
        report.errors == 0 && report.received == report.offered,
        "{} of {} orders were not placed or not received",
        report.offered - report.received.min(report.offered),
        report.offered
    );
    Ok(())
}

async fn run_in(args: &E2eArgs, dir: PathBuf) -> anyhow::Result<E2eReport> {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let database_url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.join("waybill.db").display()));
    let calls: Arc<Mutex<HashMap<String, Calls>>> = Arc::default();
    let observer: CallObserver = {
        let calls = calls.clone();
        Arc::new(move |order_id: &str| {
            if let Ok(mut calls) = calls.lock() {
                calls
                    .entry(order_id.to_owned())
                    .and_modify(|calls| calls.count += 1)
                    .or_insert(Calls {
                        first: Instant::now(),
                        count: 1,
                    });
            }
        })
    };
    let shutdown = CancellationToken::new();
    eprintln!("starting the system…");
    let system = System::start(
        SystemSettings {
            orders_listen: any,
            dispatcher_listen: any,
            status_ingest_listen: any,
            audience: "waybill-bench".to_owned(),
            database_url: database_url.clone(),
            kafka_brokers: args.kafka_brokers.clone(),
            region: "bench".to_owned(),
            data_dir: dir,
            keep_keys: false,
            shipped_after: Duration::from_secs(2),
            audit: RelaySettings::default().audit,
            observer: Some(observer),
        },
        shutdown.clone(),
    )
    .await?;
    let result = async {
        system.partners_ready(Duration::from_secs(60)).await?;
        measure(args, &system, &calls).await
    }
    .await;
    shutdown.cancel();
    let stopped = system.wait().await;
    let mut report = result?;
    stopped?;
    report.storage = redact(&database_url);
    report.broker = args
        .kafka_brokers
        .clone()
        .unwrap_or_else(|| "embedded broker".to_owned());
    report.peak_rss_mib = peak_rss_mib();
    Ok(report)
}

async fn measure(
    args: &E2eArgs,
    system: &System,
    calls: &Mutex<HashMap<String, Calls>>,
) -> anyhow::Result<E2eReport> {
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(
            OrderServiceClient::connect(format!("http://{}", system.orders_addr))
                .await
                .context("cannot reach Orders")?,
        );
    }
    let offered = (args.rate * args.duration).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    eprintln!(
        "offering {offered} orders at {}/s for {} s (open loop)",
        args.rate, args.duration
    );

    // The schedule: each order sent at its time on its own task, whatever the others do.
    let start = tokio::time::Instant::now();
    let start_at = Utc::now();
    let mut tasks = Vec::with_capacity(offered as usize);
    let mut behind = 0u64;
    let mut max_behind = Duration::ZERO;
    let mut last_progress = Instant::now();
    for index in 0..offered {
        let due = start + interval.mul_f64(index as f64);
        tokio::time::sleep_until(due).await;
        let late = tokio::time::Instant::now().saturating_duration_since(due);
        if late > BEHIND {
            behind += 1;
        }
        max_behind = max_behind.max(late);
        let mut client = clients[index as usize % clients.len()].clone();
        let request = order(&run_id, index);
        let scheduled = due.into_std();
        let scheduled_at = start_at
            + chrono::Duration::from_std(interval.mul_f64(index as f64)).unwrap_or_default();
        tasks.push(tokio::spawn(async move {
            let response = client.place_order(request).await;
            let answered = Instant::now();
            response
                .map(|r| Placed {
                    order_id: r.into_inner().order.map(|o| o.id).unwrap_or_default(),
                    scheduled,
                    scheduled_at,
                })
                .map(|placed| (placed, answered))
        }));
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            eprintln!(
                "  {:>5.1} s: offered {}, at the adapter {}, behind schedule {behind}",
                start.elapsed().as_secs_f64(),
                index + 1,
                calls.lock().map(|c| c.len()).unwrap_or(0),
            );
        }
    }

    let mut place = new_histogram()?;
    let mut placed = Vec::new();
    let mut errors = 0u64;
    for task in tasks {
        match task.await? {
            Ok((order, answered)) if !order.order_id.is_empty() => {
                place
                    .saturating_record(micros(answered.saturating_duration_since(order.scheduled)));
                placed.push(order);
            }
            Ok(_) => errors += 1,
            Err(status) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("place failed: {status}");
                }
            }
        }
    }

    // Wait for every placed order to be received by the partner, then read when it was.
    let deadline = Instant::now() + Duration::from_secs(args.drain_timeout_secs);
    let mut client = clients[0].clone();
    let mut to_received = new_histogram()?;
    let mut received = 0u64;
    let mut received_ids = std::collections::HashSet::new();
    let mut pending: Vec<&Placed> = placed.iter().collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for order in pending {
            match received_at(&mut client, &order.order_id).await? {
                Some(at) => {
                    received += 1;
                    received_ids.insert(order.order_id.as_str());
                    let latency = (at - order.scheduled_at).to_std().unwrap_or(Duration::ZERO);
                    to_received.saturating_record(micros(latency));
                }
                None => still.push(order),
            }
        }
        pending = still;
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        eprintln!("  waiting for {} orders to be received…", pending.len());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let ledger = calls.lock().map_or_else(
        |_| Ledger::default(),
        |calls| Ledger::of(&placed, &calls, &received_ids),
    );
    let mut to_adapter = new_histogram()?;
    for waited in &ledger.to_adapter {
        to_adapter.saturating_record(micros(*waited));
    }
    Ok(E2eReport {
        benchmark: "e2e",
        storage: String::new(),
        broker: String::new(),
        rate_per_s: args.rate,
        duration_s: args.duration,
        offered,
        placed: placed.len() as u64,
        errors,
        behind_schedule: behind,
        max_behind_ms: max_behind.as_secs_f64() * 1000.0,
        at_adapter: ledger.at_adapter,
        received,
        adapter_repeats: ledger.adapter_repeats,
        received_without_call: ledger.received_without_call,
        void: ledger.is_void(),
        place_ms: latency(&place),
        to_adapter_ms: latency(&to_adapter),
        to_received_ms: latency(&to_received),
        peak_rss_mib: None,
    })
}

/// The run's ledger: every order received was handed to the adapter exactly once; an order
/// taken twice, or received without the adapter, voids the run.
#[derive(Debug, Default)]
struct Ledger {
    at_adapter: u64,
    adapter_repeats: u64,
    received_without_call: u64,
    /// Scheduled send → first adapter call, per order that reached it.
    to_adapter: Vec<Duration>,
}

impl Ledger {
    fn of(
        placed: &[Placed],
        calls: &HashMap<String, Calls>,
        received: &std::collections::HashSet<&str>,
    ) -> Self {
        let mut ledger = Self::default();
        for order in placed {
            match calls.get(&order.order_id) {
                Some(called) => {
                    ledger.at_adapter += 1;
                    if called.count > 1 {
                        ledger.adapter_repeats += 1;
                    }
                    ledger
                        .to_adapter
                        .push(called.first.saturating_duration_since(order.scheduled));
                }
                None if received.contains(order.order_id.as_str()) => {
                    ledger.received_without_call += 1;
                }
                None => {}
            }
        }
        ledger
    }

    fn is_void(&self) -> bool {
        self.adapter_repeats > 0 || self.received_without_call > 0
    }
}

/// When RECEIVED_BY_PARTNER was recorded on the order, if it was.
async fn received_at(
    client: &mut OrderServiceClient<Channel>,
    order_id: &str,
) -> anyhow::Result<Option<DateTime<Utc>>> {
    let order = client
        .get_order(pb::GetOrderRequest {
            order_id: order_id.to_owned(),
        })
        .await
        .context("GetOrder")?
        .into_inner();
    Ok(order
        .status_history
        .iter()
        .find(|e| e.status() == OrderStatus::ReceivedByPartner)
        .and_then(|e| e.recorded_at.as_ref())
        .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))))
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn latency(histogram: &Histogram<u64>) -> Latency {
    let ms = |micros: u64| micros as f64 / 1000.0;
    if histogram.is_empty() {
        return Latency {
            p50: 0.0,
            p99: 0.0,
            max: 0.0,
        };
    }
    Latency {
        p50: ms(histogram.value_at_quantile(0.50)),
        p99: ms(histogram.value_at_quantile(0.99)),
        max: ms(histogram.max()),
    }
}

/// An order to `distance-freight` (which only acknowledges: no later reports in the way).
fn order(run_id: &str, index: u64) -> pb::PlaceOrderRequest {
    pb::PlaceOrderRequest {
        idempotency_key: format!("e2e-{run_id}-{index}"),
        customer: Some(pb::Customer {
            id: format!("e2e-customer-{}", index % 1000),
            name: "Bench Customer".into(),
            email: "bench@example.com".into(),
            ..Default::default()
        }),
        shipping_address: Some(pb::Address {
            line1: "1 Main St".into(),
            city: "Toronto".into(),
            country_code: "CA".into(),
            ..Default::default()
        }),
        lines: vec![pb::LineItem {
            sku: "BOOK-042".into(),
            quantity: 1,
        }],
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn placed(id: &str) -> Placed {
        Placed {
            order_id: id.to_owned(),
            scheduled: Instant::now(),
            scheduled_at: Utc::now(),
        }
    }

    #[test]
    fn an_order_taken_twice_or_received_without_the_adapter_voids_the_run() {
        let orders = [placed("a"), placed("b"), placed("c")];
        let call = |count| Calls {
            first: Instant::now(),
            count,
        };
        let received: HashSet<&str> = ["a", "b"].into();

        let clean: HashMap<String, Calls> =
            [("a".to_owned(), call(1)), ("b".to_owned(), call(1))].into();
        let ledger = Ledger::of(&orders, &clean, &received);
        assert!(!ledger.is_void(), "{ledger:?}");
        assert_eq!((ledger.at_adapter, ledger.to_adapter.len()), (2, 2));

        let twice: HashMap<String, Calls> =
            [("a".to_owned(), call(2)), ("b".to_owned(), call(1))].into();
        let ledger = Ledger::of(&orders, &twice, &received);
        assert!(ledger.is_void());
        assert_eq!(ledger.adapter_repeats, 1);

        let lost_call: HashMap<String, Calls> = [("a".to_owned(), call(1))].into();
        let ledger = Ledger::of(&orders, &lost_call, &received);
        assert!(ledger.is_void());
        assert_eq!(ledger.received_without_call, 1);
    }
}
