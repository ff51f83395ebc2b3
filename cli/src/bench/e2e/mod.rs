//! `waybill bench e2e`: the whole loop in this process — Orders, the dispatcher, StatusIngest
//! and the example partner `distance-freight` — at a fixed offered rate (open loop), or, with
//! `--find-max`, at rising rates until it no longer keeps up.
//!
//! - `load.rs`: the open-loop generator (every latency counts from the scheduled send);
//! - `timeline.rs`: the relay's and the connector's observers, one timestamp per order and step;
//! - `step.rs`: one step — offer, wait for the orders (the cut-off), read the database once;
//! - `ledger.rs`: where every order is at the cut-off; a run that loses one is void;
//! - `hops.rs`: p50/p99/max of every hop from the scheduled send to RECEIVED_BY_PARTNER;
//! - `find_max.rs`: the search and its pass criteria; `limits.rs`: the bare limits beside it;
//! - `report.rs`: text and `--json`;
//! - `processes.rs`: `--processes`, each service a process of its own, its memory read.

mod cpu;
mod door;
mod find_max;
mod hops;
mod ledger;
mod limits;
mod load;
mod processes;
mod report;
mod step;
mod timeline;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use waybill_dispatcher::RelaySettings;
use waybill_proto::v1::order_service_client::OrderServiceClient;

use self::{
    find_max::{Judged, Plan, Search},
    limits::Limits,
    report::{E2eReport, FindMaxReport},
    step::Loop,
    timeline::Timeline,
};
use super::measure::{peak_rss_mib, redact};
use crate::system::{Observe, System, SystemSettings};

/// Settings of `waybill bench e2e`.
#[derive(Debug, clap::Args)]
pub struct E2eArgs {
    /// Orders offered per second.
    #[arg(long, default_value_t = 100.0, conflicts_with = "find_max")]
    rate: f64,
    /// Seconds to offer them for.
    #[arg(long, default_value_t = 10.0, conflicts_with = "find_max")]
    duration: f64,
    /// Storage (default: SQLite in a temporary directory); `postgres://…` for Postgres (use a
    /// dedicated database: the bench enrols the example partners and adds orders).
    #[arg(long, env = "WAYBILL_DATABASE_URL")]
    database_url: Option<String>,
    /// A Kafka broker (`host:port,…`); without it the embedded in-memory broker is used.
    #[arg(long, env = "WAYBILL_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// How long to wait, after a step's last order was offered, for every order's report.
    #[arg(long, default_value_t = 60)]
    drain_timeout_secs: u64,
    /// When no order has taken any step for this long, the wait ends; an order sent and not
    /// recorded received by then is lost (and the run void).
    #[arg(long, default_value_t = 15)]
    quiet_secs: u64,
    /// Run Orders, the dispatcher, StatusIngest and the partner's connector each as a process
    /// of its own (as deployed) and report each one's peak memory; needs `--kafka-brokers`.
    /// Only placing and scheduled → received are measured then (no observer sees the other
    /// processes' steps), and the ledger checks loss but not double answers.
    #[arg(long, requires = "kafka_brokers", conflicts_with = "find_max")]
    processes: bool,
    /// With `--processes`: the run fails if a process's peak resident set exceeds this many
    /// MiB.
    #[arg(long, default_value_t = 64.0, requires = "processes")]
    rss_limit_mib: f64,
    /// The partner's handover deadline, in seconds (default: the system's — 120 s in process,
    /// the dispatcher's default of 600 s with `--processes`).
    #[arg(long)]
    handover_deadline_secs: Option<u64>,
    #[command(flatten)]
    find_max: FindMaxArgs,
    /// The ledger's test fault: the partner's adapter fails the N-th order it is called with
    /// permanently, so that order leaves the loop unanswered and the run must come out void.
    #[arg(long, hide = true)]
    lose_order: Option<u64>,
    /// Print one JSON object on the last line of stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// Settings of `--find-max`.
#[derive(Debug, clap::Args)]
struct FindMaxArgs {
    /// Find the highest rate the loop sustains (steps of rising rates) instead of offering one.
    #[arg(long)]
    find_max: bool,
    /// The first step's rate.
    #[arg(long, default_value_t = 100.0)]
    start_rate: f64,
    /// Each passing step's rate times this is the next one's, until one fails.
    #[arg(long, default_value_t = 1.5)]
    factor: f64,
    /// Seconds each step offers its rate for.
    #[arg(long, default_value_t = 30.0)]
    step_secs: f64,
    /// Steps bisecting between the highest passing and the lowest failing rate.
    #[arg(long, default_value_t = 3)]
    refine: u32,
    /// The most steps in all.
    #[arg(long, default_value_t = 16)]
    max_steps: u32,
    /// Orders the relay's bare bookkeeping is measured on, before the steps and again after
    /// (Postgres; rounded up to thousands).
    #[arg(long, default_value_t = 10_000)]
    limit_orders: usize,
    /// Reports the raw report writes are measured on, before the steps and again after
    /// (Postgres; as many through `ReportStatus`).
    #[arg(long, default_value_t = 5_000)]
    limit_reports: usize,
}

/// Runs the benchmark.
pub async fn run(args: E2eArgs) -> anyhow::Result<()> {
    if args.find_max.find_max {
        let f = &args.find_max;
        anyhow::ensure!(
            f.start_rate >= 1.0 && f.start_rate <= 100_000.0 && f.factor > 1.0,
            "--start-rate must be 1 to 100000 orders per second and --factor above 1"
        );
        anyhow::ensure!(
            f.step_secs > 0.0 && f.step_secs <= 3600.0 && f.max_steps >= 1,
            "--step-secs must be above 0 and at most 3600, --max-steps at least 1"
        );
    } else {
        anyhow::ensure!(
            args.rate > 0.0 && args.rate <= 100_000.0,
            "--rate must be above 0 and at most 100000 orders per second"
        );
        anyhow::ensure!(
            args.duration > 0.0 && args.duration <= 3600.0,
            "--duration must be above 0 and at most 3600 seconds"
        );
    }
    let dir = std::env::temp_dir().join(format!("waybill-bench-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = if args.find_max.find_max {
        find_max(&args, dir.clone()).await
    } else {
        one_rate(&args, dir.clone()).await
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// `bench e2e` at one rate.
async fn one_rate(args: &E2eArgs, dir: PathBuf) -> anyhow::Result<()> {
    let (database_url, broker) = storage(args, &dir);
    if args.processes {
        return with_processes(args, &database_url, broker, &dir).await;
    }
    let report = with_loop(args, &database_url, dir, async |lp: &Loop| {
        offer_the_rate(args, lp).await
    })
    .await?;
    let report = E2eReport::new(report, redact(&database_url), broker, peak_rss_mib());
    report.print(args.json)?;
    report.verdict()
}

/// `bench e2e --processes` at one rate: the services as processes of their own, the load
/// and the ledger in this one.
async fn with_processes(
    args: &E2eArgs,
    database_url: &str,
    broker: String,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let timeline = Arc::new(Timeline::new());
    eprintln!("starting the services, each a process of its own…");
    let stack = processes::Processes::start(
        &processes::ProcessSettings {
            database_url,
            brokers: args.kafka_brokers.as_deref().unwrap_or_default(),
            dir,
            handover_deadline: args.handover_deadline_secs.map(Duration::from_secs),
        },
        timeline.clone(),
    )
    .await?;
    let measured = async {
        let lp = Loop::connect(args, stack.orders_addr, timeline, stack.db.clone(), false).await?;
        offer_the_rate(args, &lp).await
    }
    .await;
    let peaks = stack.stop().await;
    let report = E2eReport::new(measured?, redact(database_url), broker, peak_rss_mib())
        .with_processes(peaks, args.rss_limit_mib);
    report.print(args.json)?;
    report.verdict()
}

/// `--rate` for `--duration`, one step.
async fn offer_the_rate(args: &E2eArgs, lp: &Loop) -> anyhow::Result<step::StepReport> {
    eprintln!(
        "offering {} orders at {}/s for {} s (open loop)",
        (args.rate * args.duration).round().max(1.0),
        args.rate,
        args.duration
    );
    lp.step(0, args.rate, Duration::from_secs_f64(args.duration))
        .await
}

impl Loop {
    /// The loop of a running system: four clients to Orders at `orders_addr`, the database
    /// `db`, `timeline` (whose observers see the adapter's answers if `answers_seen`).
    async fn connect(
        args: &E2eArgs,
        orders_addr: SocketAddr,
        timeline: Arc<Timeline>,
        db: waybill_service_kit::db::Database,
        answers_seen: bool,
    ) -> anyhow::Result<Self> {
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(
                OrderServiceClient::connect(format!("http://{orders_addr}"))
                    .await
                    .context("cannot reach Orders")?,
            );
        }
        Ok(Self {
            clients,
            timeline,
            db,
            run: uuid::Uuid::now_v7().simple().to_string()[..12].to_owned(),
            quiet: Duration::from_secs(args.quiet_secs.max(1)),
            drain_timeout: Duration::from_secs(args.drain_timeout_secs),
            answers_seen,
        })
    }
}

/// `bench e2e --find-max`.
async fn find_max(args: &E2eArgs, dir: PathBuf) -> anyhow::Result<()> {
    let f = &args.find_max;
    let (database_url, broker) = storage(args, &dir);
    let mut limits = Limits::prepare(&database_url, f.limit_orders, f.limit_reports).await?;
    if let Some(limits) = &mut limits {
        limits.before().await?;
    }
    let step_duration = Duration::from_secs_f64(f.step_secs);
    let plan = Plan {
        start: f.start_rate,
        factor: f.factor,
        refine: f.refine,
        max_steps: f.max_steps,
    };
    let searched = with_loop(args, &database_url, dir, async |lp: &Loop| {
        let mut search = Search::new(plan);
        let mut steps: Vec<Judged> = Vec::new();
        let mut stopped = None;
        while let Some(rate) = search.next() {
            let index = u32::try_from(steps.len()).unwrap_or(u32::MAX) + 1;
            eprintln!("step {index}: {rate}/s for {} s", f.step_secs);
            let report = lp.step(index, rate, step_duration).await?;
            let failures = find_max::judge(&report);
            let judged = Judged {
                step: index,
                passed: failures.is_empty(),
                failures,
                report,
            };
            eprintln!("{}", find_max::table_line(&judged));
            search.record(rate, judged.passed);
            let (void, cleared) = (
                judged.report.ledger.void,
                judged.report.cut_off != ledger::CutOff::Timeout,
            );
            steps.push(judged);
            if void {
                stopped = Some("a step's ledger is void".to_owned());
                break;
            }
            if !cleared {
                stopped = Some(format!(
                    "step {index}'s orders did not clear within the drain timeout: the next \
                     step would start behind"
                ));
                break;
            }
        }
        Ok((search, steps, stopped))
    })
    .await;
    let after = match &mut limits {
        Some(limits) if searched.is_ok() => limits.after().await,
        _ => Ok(()),
    };
    let figures = limits
        .as_ref()
        .map(|l| l.figures.clone())
        .unwrap_or_default();
    if let Some(limits) = limits {
        limits.close().await;
    }
    let (search, steps, stopped) = searched?;
    after?;
    let report = FindMaxReport::new(
        &search,
        steps,
        stopped,
        figures,
        step_duration,
        redact(&database_url),
        broker,
        peak_rss_mib(),
    );
    report.print(args.json)?;
    report.verdict()
}

/// The database URL (a temporary SQLite file by default) and the broker's name.
fn storage(args: &E2eArgs, dir: &std::path::Path) -> (String, String) {
    (
        args.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.join("waybill.db").display())),
        args.kafka_brokers
            .clone()
            .unwrap_or_else(|| "embedded broker".to_owned()),
    )
}

/// Starts the system with the timeline as its observers, runs `body` on the loop, and stops
/// the system (the partners first, so no report is cut off).
async fn with_loop<T>(
    args: &E2eArgs,
    database_url: &str,
    dir: PathBuf,
    body: impl AsyncFnOnce(&Loop) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let timeline = Arc::new(Timeline::new());
    let shutdown = CancellationToken::new();
    eprintln!("starting the system…");
    let system = System::start(
        SystemSettings {
            orders_listen: any,
            dispatcher_listen: any,
            status_ingest_listen: any,
            audience: "waybill-bench".to_owned(),
            database_url: database_url.to_owned(),
            kafka_brokers: args.kafka_brokers.clone(),
            region: "bench".to_owned(),
            data_dir: dir,
            keep_keys: false,
            shipped_after: Duration::from_secs(2),
            audit: RelaySettings::default().audit,
            handover_deadline: Duration::from_secs(args.handover_deadline_secs.unwrap_or(120)),
            observe: Observe {
                connector: Some(timeline.clone()),
                relay: waybill_dispatcher::relay::Observer::new(timeline.clone()),
                lose_nth_order: args.lose_order,
            },
        },
        shutdown.clone(),
    )
    .await?;
    let result = async {
        system.partners_ready(Duration::from_secs(60)).await?;
        let lp = Loop::connect(
            args,
            system.orders_addr,
            timeline.clone(),
            system.database().clone(),
            true,
        )
        .await?;
        body(&lp).await
    }
    .await;
    shutdown.cancel();
    let stopped = system.wait().await;
    let out = result?;
    stopped?;
    Ok(out)
}
