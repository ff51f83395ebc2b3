//! `waybill bench place` drives `PlaceOrder` with N requests, C in flight, against a running Orders
//! service (`--target`) or one it starts in-process on `--database-url`. Each request is a new
//! order (its own idempotency key), priced from the sample catalog.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use waybill_orders::OrdersDeps;
use waybill_proto::v1::{self as pb, order_service_client::OrderServiceClient};
use waybill_service_kit::{
    db::{Backend, Database, PoolSettings},
    grpc::ServerLimits,
};

use super::{
    measure::{Latency, Rate, mib_text, new_histogram, peak_rss_mib, redact},
    outbox,
    prefill::{Prefill, prefill},
};

/// Turns `bench place` and its limit take.
const ROUNDS: u64 = 5;

/// Settings of `waybill bench place`.
#[derive(Debug, clap::Args)]
pub struct PlaceArgs {
    /// An Orders service to drive, e.g. `http://127.0.0.1:50051`. Without it, one is started
    /// in this process on `--database-url`.
    #[arg(long)]
    target: Option<String>,
    /// Storage for the in-process Orders service.
    #[arg(
        long,
        env = "WAYBILL_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// How many orders to place.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    requests: u64,
    /// How many requests are in flight at once (one connection each, like separate clients).
    #[arg(long, short = 'c', default_value_t = 8)]
    concurrency: u64,
    /// Requests placed first and not measured (connection set-up, caches).
    #[arg(long, default_value_t = 200)]
    warmup: u64,
    /// Finished orders to have in the database before the run (Postgres, in-process): written
    /// once with plain SQL and kept, so the figures show whether placing slows as the tables
    /// grow.
    #[arg(long, default_value_t = 0)]
    prefill: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct PlaceReport {
    benchmark: &'static str,
    target: String,
    storage: String,
    requests: u64,
    concurrency: u64,
    /// Orders already in the database (`--prefill`).
    prefill: Option<Prefill>,
    errors: u64,
    seconds: f64,
    throughput_per_s: f64,
    /// The placing write alone (the Orders store's one statement, no gRPC, no validation or
    /// pricing), as many in flight, on the same database in the same run; `null` with
    /// `--target`.
    limit: Option<Rate>,
    /// `throughput_per_s / limit`.
    ratio: Option<f64>,
    latency_ms: Latency,
    /// Peak resident set size of this process (client and, without `--target`, the server).
    peak_rss_mib: Option<f64>,
}

/// Runs `waybill bench place`.
pub async fn run(args: PlaceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    let shutdown = CancellationToken::new();
    let mut in_process = None;
    let mut prefilled = None;
    anyhow::ensure!(
        args.prefill == 0 || args.target.is_none(),
        "--prefill needs the in-process Orders service (no --target)"
    );
    let (target, storage) = match &args.target {
        Some(target) => (target.clone(), "remote".to_owned()),
        None => {
            let settings = PoolSettings {
                max_connections: u32::try_from(args.concurrency.max(4)).unwrap_or(64),
                ..PoolSettings::default()
            };
            let db = Database::connect(&args.database_url, &settings, shutdown.clone())
                .await
                .context("cannot start the in-process Orders service")?;
            waybill_orders::store::seed_catalog(&db).await?;
            prefilled = match (db.backend(), args.prefill) {
                (_, 0) => None,
                (Backend::Postgres(pool), target) => Some(prefill(pool, target).await?),
                (Backend::Sqlite(_), _) => anyhow::bail!("--prefill needs Postgres"),
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            tokio::spawn(waybill_orders::serve(
                listener,
                OrdersDeps::new(&db, "bench"),
                ServerLimits::default(),
                shutdown.clone(),
            ));
            in_process = Some(db);
            (format!("http://{addr}"), redact(&args.database_url))
        }
    };

    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        let channel: Channel = Endpoint::from_shared(target.clone())?
            .connect()
            .await
            .with_context(|| format!("cannot connect to {target}"))?;
        clients.push(OrderServiceClient::new(channel));
    }

    // Warm-up, not measured.
    drive(&clients, &format!("{run_id}-warm"), args.warmup).await?;
    // PlaceOrder and the placing write alone (on the same database, as many at once) take
    // turns in rounds, so that the machine's drift — its commit latency varies by half within
    // minutes — falls on both alike.
    let rounds = ROUNDS.min(args.requests).max(1);
    let mut histogram = new_histogram()?;
    let mut errors = 0;
    let mut elapsed = Duration::ZERO;
    let mut limit_elapsed = Duration::ZERO;
    for round in 0..rounds {
        let count = args.requests / rounds + u64::from(round < args.requests % rounds);
        let round_id = format!("{run_id}-{round}");
        let started = Instant::now();
        let (round_histogram, round_errors) = drive(&clients, &round_id, count).await?;
        elapsed += started.elapsed();
        histogram.add(&round_histogram)?;
        errors += round_errors;
        if let Some(db) = &in_process {
            limit_elapsed += placing_limit(db, &round_id, count, args.concurrency).await?;
        }
    }
    let throughput = (args.requests - errors) as f64 / elapsed.as_secs_f64().max(f64::EPSILON);
    let limit = in_process.as_ref().map(|_| {
        Rate::new(
            usize::try_from(args.requests).unwrap_or(usize::MAX),
            limit_elapsed,
        )
    });
    shutdown.cancel();

    let report = PlaceReport {
        benchmark: "place",
        target,
        storage,
        requests: args.requests,
        concurrency: args.concurrency,
        prefill: prefilled,
        errors,
        seconds: elapsed.as_secs_f64(),
        throughput_per_s: throughput,
        ratio: limit.map(|limit| throughput / limit.orders_per_second.max(f64::EPSILON)),
        limit,
        latency_ms: Latency::of(&histogram),
        peak_rss_mib: peak_rss_mib(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "place: {} orders, {} in flight, {} errors, {:.2} s\n  throughput {:.0} orders/s{}\n  latency    p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n  target {} ({})\n  peak RSS {}",
            report.requests,
            report.concurrency,
            report.errors,
            report.seconds,
            report.throughput_per_s,
            match (&report.limit, report.ratio) {
                (Some(limit), Some(ratio)) => format!(
                    "\n  limit      {:.0} orders/s (the placing write alone), ratio {:.0}%",
                    limit.orders_per_second,
                    ratio * 100.0
                ),
                _ => String::new(),
            },
            report.latency_ms.p50,
            report.latency_ms.p99,
            report.latency_ms.max,
            report.target,
            report.storage,
            mib_text(report.peak_rss_mib),
        );
    }
    anyhow::ensure!(errors == 0, "{errors} requests failed");
    Ok(())
}

/// The limit `PlaceOrder` is measured against: the placing write alone for `count` orders, `concurrency` at once: how long it took.
async fn placing_limit(
    db: &Database,
    run_id: &str,
    count: u64,
    concurrency: u64,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    outbox::place(
        db,
        &format!("{run_id}-limit"),
        "bench-limit",
        "10115",
        chrono::Utc::now(),
        usize::try_from(count).unwrap_or(usize::MAX),
        usize::try_from(concurrency).unwrap_or(1),
    )
    .await?;
    Ok(started.elapsed())
}

/// Places `count` orders through `clients`, one worker per client; returns latencies (µs) and
/// the number of failed calls.
async fn drive(
    clients: &[OrderServiceClient<Channel>],
    run_id: &str,
    count: u64,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let next = Arc::new(AtomicU64::new(0));
    let workers = clients.iter().cloned().map(|mut client| {
        let next = next.clone();
        let run_id = run_id.to_owned();
        tokio::spawn(async move {
            let mut histogram = new_histogram().ok()?;
            let mut errors = 0;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    break;
                }
                let started = Instant::now();
                match client.place_order(sample_order(&run_id, index)).await {
                    Ok(_) => {
                        let micros =
                            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                        histogram.saturating_record(micros);
                    }
                    Err(status) => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!("place failed: {status}");
                        }
                    }
                }
            }
            Some((histogram, errors))
        })
    });
    let mut total = new_histogram()?;
    let mut errors = 0;
    for worker in futures::future::join_all(workers).await {
        let (histogram, worker_errors) = worker?.context("latency histogram")?;
        total.add(&histogram)?;
        errors += worker_errors;
    }
    Ok((total, errors))
}

fn sample_order(run_id: &str, index: u64) -> pb::PlaceOrderRequest {
    pb::PlaceOrderRequest {
        idempotency_key: format!("bench-{run_id}-{index}"),
        customer: Some(pb::Customer {
            id: format!("bench-customer-{}", index % 1000),
            name: "Bench Customer".into(),
            email: "bench@example.com".into(),
            phone: String::new(),
        }),
        shipping_address: Some(pb::Address {
            line1: "1 Main St".into(),
            line2: String::new(),
            city: "Springfield".into(),
            region: "WA".into(),
            postal_code: "98001".into(),
            country_code: "US".into(),
        }),
        lines: vec![
            pb::LineItem {
                sku: "MUG-001".into(),
                quantity: 2,
            },
            pb::LineItem {
                sku: "BOOK-042".into(),
                quantity: 1,
            },
            pb::LineItem {
                sku: "SOCKS-3PK".into(),
                quantity: 5,
            },
        ],
    }
}
