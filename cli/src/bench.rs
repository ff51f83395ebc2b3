//! `waybill bench`: load and latency figures that print numbers (never pass/fail timings).
//!
//! `bench place` drives `PlaceOrder` with N requests, C in flight, against a running Orders
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

/// Turns `bench place` and its limit take.
const ROUNDS: u64 = 5;

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// PlaceOrder throughput and latency.
    Place(PlaceArgs),
    /// How fast one dispatcher (or several) drains a full outbox, next to the bare SQL
    /// bookkeeping on the same database in the same run (the limit).
    Drain(crate::bench_drain::DrainArgs),
    /// ReportStatus throughput and p50/p99 with signature checks on, against Postgres, next to
    /// the raw rate of the same inserts in the same run (the limit).
    Report(ReportArgs),
    /// The whole loop at a fixed offered rate (open loop): latency from the PlaceOrder response
    /// to the partner adapter's call and to RECEIVED_BY_PARTNER being recorded.
    E2e(crate::bench_e2e::E2eArgs),
}

/// Settings of `waybill bench report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Postgres to run on (use a dedicated database: the bench adds a partner, a key and
    /// orders).
    #[arg(
        long,
        env = "WAYBILL_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Reports to measure (and as many raw transactions).
    #[arg(long, short = 'n', default_value_t = 5_000)]
    reports: usize,
    /// Requests in flight at once (one connection each), and raw transactions at once.
    #[arg(long, short = 'c', default_value_t = 8)]
    concurrency: usize,
    /// Reports sent first and not measured.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

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
    prefill: Option<crate::bench_prefill::Prefill>,
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

#[derive(Debug, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

/// Runs a benchmark subcommand.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Place(args) => place(args).await,
        BenchCommand::Drain(args) => crate::bench_drain::run(args).await,
        BenchCommand::Report(args) => report(args).await,
        BenchCommand::E2e(args) => crate::bench_e2e::run(args).await,
    }
}

async fn report(args: ReportArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    let shutdown = CancellationToken::new();
    let settings = PoolSettings {
        max_connections: u32::try_from(args.concurrency.max(4) * 2).unwrap_or(64),
        ..PoolSettings::default()
    };
    let db = Database::connect(&args.database_url, &settings, shutdown.clone())
        .await
        .context("cannot open the bench database")?;
    let options = waybill_status_ingest::bench::BenchOptions {
        reports: args.reports,
        concurrency: args.concurrency,
        warmup: args.warmup,
    };
    let report = waybill_status_ingest::bench::report_bench(&db, &options).await?;
    shutdown.cancel();
    db.close().await;
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{}", report.to_text());
    }
    Ok(())
}

async fn place(args: PlaceArgs) -> anyhow::Result<()> {
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
                (Backend::Postgres(pool), target) => {
                    Some(crate::bench_prefill::prefill(pool, target).await?)
                }
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

    let ms = |micros: u64| Duration::from_micros(micros).as_secs_f64() * 1000.0;
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
        latency_ms: Latency {
            p50: ms(histogram.value_at_quantile(0.50)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        },
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
            report
                .peak_rss_mib
                .map_or_else(|| "unknown".to_owned(), |mib| format!("{mib:.0} MiB")),
        );
    }
    anyhow::ensure!(errors == 0, "{errors} requests failed");
    Ok(())
}

/// Runs `count` placing writes straight through the Orders store, `concurrency` at once: the
/// limit `PlaceOrder` is measured against.
/// The placing write alone for `count` orders, `concurrency` at once: how long it took.
async fn placing_limit(
    db: &Database,
    run_id: &str,
    count: u64,
    concurrency: u64,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    crate::bench_outbox::place(
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

/// 1 µs to 60 s at 3 significant digits.
pub(crate) fn new_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
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

/// A count over a time.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rate {
    orders: usize,
    pub(crate) seconds: f64,
    pub(crate) orders_per_second: f64,
}

impl Rate {
    pub(crate) fn new(orders: usize, elapsed: Duration) -> Self {
        Self {
            orders,
            seconds: elapsed.as_secs_f64(),
            orders_per_second: orders as f64 / elapsed.as_secs_f64().max(1e-9),
        }
    }

    /// Both counts over both times.
    pub(crate) fn plus(self, other: Self) -> Self {
        Self::new(
            self.orders + other.orders,
            Duration::from_secs_f64(self.seconds + other.seconds),
        )
    }
}

/// The URL without its password, for printing.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// CPU time (user + system) this process has used so far, in seconds (Linux; `None`
/// elsewhere). `/proc` counts it in USER_HZ ticks, which Linux fixes at 100 for user space.
pub(crate) fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU time the host took from this machine so far (steal time), in seconds, over all its CPUs
/// (Linux; `None` elsewhere). A virtual machine whose host is busy runs slower for a while;
/// a figure measured meanwhile says more about the host than about the build.
pub(crate) fn host_steal_seconds() -> Option<f64> {
    // `cpu  user nice system idle iowait irq softirq steal …`, in USER_HZ ticks.
    Some(proc_field("/proc/stat", "cpu ", 7)? / 100.0)
}

/// The process's peak resident set size (Linux: `VmHWM`).
pub(crate) fn peak_rss_mib() -> Option<f64> {
    // `VmHWM:     12345 kB`.
    Some(proc_field("/proc/self/status", "VmHWM:", 0)? / 1024.0)
}

/// The number `field` (from 0, split at whitespace) after `prefix` on the first line of the
/// `/proc` file `path` that starts with it.
fn proc_field(path: &str, prefix: &str, field: usize) -> Option<f64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix(prefix))?
        .split_whitespace()
        .nth(field)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn process_cpu_time_counts_work_done() {
        let Some(before) = super::process_cpu_seconds() else {
            return; // no /proc here
        };
        // Busy until the count shows a tenth of a second more. On a loaded machine that takes
        // longer than a tenth in wall time, so the bound is generous; a count that never
        // moves fails.
        let started = Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after - before < 0.1 && started.elapsed() < Duration::from_secs(30) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            after = super::process_cpu_seconds().expect("readable twice");
        }
        assert!(after - before >= 0.1, "{before} s before, {after} s after");
    }

    #[test]
    fn steal_time_is_read_where_linux_counts_it() {
        let Some(first) = super::host_steal_seconds() else {
            assert!(
                std::fs::metadata("/proc/stat").is_err(),
                "/proc/stat is there but its steal time was not read"
            );
            return;
        };
        let second = super::host_steal_seconds().expect("readable twice");
        assert!(first >= 0.0 && second >= first, "{first} then {second}");
    }
}
