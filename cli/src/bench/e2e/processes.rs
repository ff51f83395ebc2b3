//! `bench e2e --processes`: Orders, the dispatcher, StatusIngest and the partner's connector
//! each as a process of its own (this executable's `orders`, `dispatcher`, `status-ingest`
//! and `partner distance-freight`), as a deployment runs them, so that each one's memory can
//! be read on its own.
//!
//! The relay's and the connector's steps happen in other processes, so no observer sees them:
//! the bench learns that an order was received from the database instead (a poll each
//! [`POLL`] of the `RECEIVED_BY_PARTNER` events recorded lately), which drives the backlog, the
//! cut-off and quiet detection; the ledger is read from the database as in-process. What the
//! bench cannot see here is whether the adapter answered an order twice.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use waybill_connector_sdk::examples::ExamplePartner;
use waybill_proto::v1::dispatch_admin_client::DispatchAdminClient;
use waybill_service_kit::{
    db::{Database, Id, Instant as DbInstant},
    on_pool,
};

use super::timeline::Timeline;
use crate::bench::measure::process_cpu_seconds_of;
use crate::system;

/// How often the database is asked which orders were received.
const POLL: Duration = Duration::from_millis(500);
/// How far back each poll looks before the latest time it saw: transactions commit out of
/// `recorded_at` order, and the timeline counts each order's first confirmation once.
const OVERLAP: chrono::TimeDelta = chrono::TimeDelta::seconds(5);
/// The partner the bench's orders go to (its routes: Canada).
const PARTNER: ExamplePartner = ExamplePartner::DistanceFreight;
const AUDIENCE: &str = "waybill-bench";

/// `RECEIVED_BY_PARTNER` events recorded at or after `$1`.
const RECEIVED_SINCE: &str = "SELECT order_id, recorded_at FROM order_status_events \
     WHERE status = 'RECEIVED_BY_PARTNER' AND recorded_at >= $1";

/// The poll's own index, made when the services are up and dropped when they stop: without
/// it each poll scans every history event (several an order), and at 264,000 orders a
/// poll took 1–4 s of a Postgres backend, twice a second, taken from the loop it measures.
/// With it a poll reads the last seconds' events; the loop pays one index entry an order.
const RECEIVED_INDEX: &str = "CREATE INDEX IF NOT EXISTS bench_e2e_received \
     ON order_status_events (recorded_at) WHERE status = 'RECEIVED_BY_PARTNER'";
const DROP_RECEIVED_INDEX: &str = "DROP INDEX IF EXISTS bench_e2e_received";

/// One service's process at the end of the run.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ProcessPeak {
    pub(super) role: &'static str,
    /// Its peak resident set (the kernel's `VmHWM`), read just before it was stopped.
    pub(super) peak_rss_mib: Option<f64>,
    /// Its CPU time (user + system) from its start to just before it was stopped, in seconds.
    pub(super) cpu_seconds: Option<f64>,
    /// Whether it stopped cleanly on SIGTERM (exit 0 within the bound).
    pub(super) clean_exit: bool,
}

struct Service {
    role: &'static str,
    child: Child,
}

/// The services as processes, and the poll that tells the timeline what was received.
pub(super) struct Processes {
    pub(super) orders_addr: SocketAddr,
    /// The bench's own connection (ledger, settling, the poll).
    pub(super) db: Database,
    services: Vec<Service>,
    /// Where the processes' logs are.
    dir: PathBuf,
    poll_stop: CancellationToken,
    poll: tokio::task::JoinHandle<()>,
}

/// Settings of the processes.
pub(super) struct ProcessSettings<'a> {
    pub(super) database_url: &'a str,
    pub(super) brokers: &'a str,
    pub(super) dir: &'a Path,
    /// The partner's handover deadline (`None`: the dispatcher's default).
    pub(super) handover_deadline: Option<Duration>,
}

impl Processes {
    /// Starts the three services, enrols the partner, starts its connector and waits until its
    /// consumer group has partitions; then polls the database for received orders into
    /// `timeline` until stopped.
    pub(super) async fn start(
        settings: &ProcessSettings<'_>,
        timeline: Arc<Timeline>,
    ) -> anyhow::Result<Self> {
        let addr = || -> anyhow::Result<SocketAddr> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
        };
        let (orders_addr, dispatcher_addr, ingest_addr) = (addr()?, addr()?, addr()?);
        let partner_metrics = addr()?;
        let url = settings.database_url;
        let mut services = Vec::new();
        for (role, args) in [
            (
                "orders",
                vec![
                    "orders".to_owned(),
                    format!("--listen={orders_addr}"),
                    format!("--database-url={url}"),
                    "--seed-catalog".to_owned(),
                    // The bench is the only caller: its rate is the schedule's.
                    "--rate-limit=1000000".to_owned(),
                ],
            ),
            (
                "status-ingest",
                vec![
                    "status-ingest".to_owned(),
                    format!("--listen={ingest_addr}"),
                    format!("--database-url={url}"),
                    format!("--audience={AUDIENCE}"),
                    "--rate-limit=1000000".to_owned(),
                ],
            ),
            (
                "dispatcher",
                vec![
                    "dispatcher".to_owned(),
                    format!("--listen={dispatcher_addr}"),
                    format!("--database-url={url}"),
                    format!("--kafka-brokers={}", settings.brokers),
                    format!("--reply-to=http://{ingest_addr}"),
                ],
            ),
        ] {
            services.push(spawn(role, &args, settings.dir)?);
            // One at a time: each migrates the database at start-up.
            let listen = match role {
                "orders" => orders_addr,
                "status-ingest" => ingest_addr,
                _ => dispatcher_addr,
            };
            wait_serving(listen, role, &mut services, settings.dir).await?;
        }
        let key = system::kept_key(settings.dir, PARTNER)?;
        let mut admin = DispatchAdminClient::connect(format!("http://{dispatcher_addr}"))
            .await
            .context("cannot reach the dispatcher admin API")?;
        system::enroll(&mut admin, PARTNER, &key, settings.handover_deadline).await?;
        let partner_args = vec![
            "partner".to_owned(),
            PARTNER.id().to_owned(),
            format!("--kafka-brokers={}", settings.brokers),
            format!(
                "--key-file={}",
                settings.dir.join(format!("{}.pem", PARTNER.id())).display()
            ),
            format!("--key-id={}", key.key_id()),
            format!("--audience={AUDIENCE}"),
            format!(
                "--inbox={}",
                settings
                    .dir
                    .join(format!("{}-inbox.db", PARTNER.id()))
                    .display()
            ),
            // Tansu and the embedded broker hold a fetch until its wait runs out.
            "--fetch-wait-ms=5".to_owned(),
            "--session-timeout-ms=6000".to_owned(),
            format!("--metrics-listen={partner_metrics}"),
        ];
        services.push(spawn("partner", &partner_args, settings.dir)?);
        let db = Database::connect(
            url,
            &waybill_service_kit::db::PoolSettings::default(),
            CancellationToken::new(),
        )
        .await?;
        let mut processes = Self {
            orders_addr,
            db: db.clone(),
            services,
            dir: settings.dir.to_owned(),
            poll_stop: CancellationToken::new(),
            poll: tokio::spawn(async {}),
        };
        if let Err(error) = processes.partner_ready(partner_metrics).await {
            processes.stop().await;
            return Err(error);
        }
        if let Err(error) = run_statement(&db, RECEIVED_INDEX).await {
            processes.stop().await;
            return Err(error).context("cannot create the bench's index of received orders");
        }
        processes.poll = tokio::spawn(poll_received(db, timeline, processes.poll_stop.clone()));
        Ok(processes)
    }

    /// Waits until the partner's connector has partitions assigned (its metrics list a
    /// partition), at most a minute; fails at once if a process exited.
    async fn partner_ready(&mut self, metrics: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            exited(&mut self.services, &self.dir)?;
            if scrape(metrics)
                .await
                .is_ok_and(|page| page.contains("partition_in_flight{"))
            {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the {PARTNER} connector had no partitions assigned within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads each process's peak memory and CPU time, then stops them: the partner first (so no report is
    /// cut off), then the dispatcher, StatusIngest and Orders, each with SIGTERM.
    pub(super) async fn stop(mut self) -> Vec<ProcessPeak> {
        self.poll_stop.cancel();
        let _ = (&mut self.poll).await;
        if let Err(error) = run_statement(&self.db, DROP_RECEIVED_INDEX).await {
            eprintln!("cannot drop the bench's index of received orders: {error:#}");
        }
        let mut peaks = Vec::new();
        while let Some(mut service) = self.services.pop() {
            let peak_rss_mib = service.child.id().and_then(peak_rss_mib);
            let cpu_seconds = service.child.id().and_then(process_cpu_seconds_of);
            let clean_exit = terminate(&mut service.child, Duration::from_secs(30)).await;
            peaks.push(ProcessPeak {
                role: service.role,
                peak_rss_mib,
                cpu_seconds,
                clean_exit,
            });
        }
        self.db.close().await;
        peaks.reverse();
        peaks
    }
}

fn spawn(role: &'static str, args: &[String], dir: &Path) -> anyhow::Result<Service> {
    let log = log_path(dir, role);
    let stderr =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = Command::new(std::env::current_exe().context("cannot find this executable")?)
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start the {role} process"))?;
    Ok(Service { role, child })
}

/// Fails, with its log, if one of `services` has exited (during start-up, each must run).
fn exited(services: &mut [Service], dir: &Path) -> anyhow::Result<()> {
    for service in services {
        if let Some(status) = service.child.try_wait()? {
            anyhow::bail!(
                "{} exited ({status}) during start-up; its log:\n{}",
                service.role,
                std::fs::read_to_string(log_path(dir, service.role)).unwrap_or_default()
            );
        }
    }
    Ok(())
}

fn log_path(dir: &Path, role: &str) -> PathBuf {
    dir.join(format!("{role}.log"))
}

/// Waits until `addr`'s gRPC health says SERVING, at most a minute; fails with the process's
/// log when it exits first.
async fn wait_serving(
    addr: SocketAddr,
    role: &str,
    services: &mut [Service],
    dir: &Path,
) -> anyhow::Result<()> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        exited(services, dir)?;
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            && let Ok(reply) = HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
            && reply.into_inner().status() == ServingStatus::Serving
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{role} did not start within 60 s; its log:\n{}",
            std::fs::read_to_string(log_path(dir, role)).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM, then waits at most `bound` for the exit (then kills it): whether it exited 0.
async fn terminate(child: &mut Child, bound: Duration) -> bool {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    match tokio::time::timeout(bound, child.wait()).await {
        Ok(Ok(status)) => status.success(),
        _ => {
            let _ = child.kill().await;
            false
        }
    }
}

/// The page a Prometheus scraper would get from `addr` (HTTP/1.0, read to the end).
async fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut page = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut page))
        .await
        .map_err(|_| std::io::Error::other("no answer within 5 s"))??;
    Ok(page)
}

/// A process's peak resident set so far (`VmHWM` in `/proc/<pid>/status`), in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Runs one statement that returns no rows, on either backend.
async fn run_statement(db: &Database, sql: &str) -> anyhow::Result<()> {
    on_pool!(db.backend(), |pool| {
        sqlx::query(sql).execute(pool).await?;
    });
    Ok(())
}

/// Marks each order recorded `RECEIVED_BY_PARTNER` as confirmed on `timeline`, polling every
/// [`POLL`] until `stop`. A failed poll is retried at the next.
async fn poll_received(db: Database, timeline: Arc<Timeline>, stop: CancellationToken) {
    let mut since: DateTime<Utc> = Utc::now() - OVERLAP;
    loop {
        type Row = (Id, DbInstant);
        let rows: anyhow::Result<Vec<Row>> = async {
            Ok(on_pool!(db.backend(), |pool| {
                sqlx::query_as(RECEIVED_SINCE)
                    .bind(DbInstant(since))
                    .fetch_all(pool)
                    .await?
            }))
        }
        .await;
        match rows {
            Ok(rows) => {
                let latest = rows.iter().map(|(_, at)| at.0).max();
                for (id, _) in rows {
                    timeline.confirm(id.0);
                }
                if let Some(latest) = latest {
                    since = since.max(latest - OVERLAP);
                }
            }
            Err(error) => eprintln!("cannot read received orders (trying again): {error:#}"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
    }
}
