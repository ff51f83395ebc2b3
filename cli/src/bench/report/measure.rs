//! `waybill bench report`: `ReportStatus` throughput and latency with every check on (token
//! parsing, key lookup, strict Ed25519 signature, claims, replay guard, routing, duplicate), over
//! gRPC on loopback against an in-process StatusIngest on Postgres or SQLite — next to the limit
//! measured in the same run: the same writes (replay-guard row, order bump, history event,
//! dispatch row acknowledged) as plain SQL, one transaction per report, at the same concurrency,
//! with no checks ([`fixture`]).
//!
//! Each measured report is a first `SHIPPED` report on its own order routed to the bench
//! partner; the tokens are signed by the client (as partners do) before the clock starts. The
//! limit and `ReportStatus` take turns in five rounds, each phase right after a checkpoint, so
//! that the machine's drift and the database's checkpoints fall on both alike.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use hdrhistogram::Histogram;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use waybill_proto::{
    time::to_timestamp,
    v1::{OrderStatus, ReportStatusRequest, status_ingest_client::StatusIngestClient},
};
use waybill_service_kit::{
    clock::truncate_to_micros,
    db::{Backend, Database},
    grpc::ServerLimits,
};
use waybill_token::{Report, ReportClaims, SigningKey, TokenSigner};

use waybill_status_ingest::IngestDeps;

use super::error::BenchError;
use super::fixture;

const AUDIENCE: &str = "waybill-bench";

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Measured reports (each side).
    pub reports: usize,
    /// Requests (and raw transactions) in flight at once.
    pub concurrency: usize,
    /// Reports sent first and not measured.
    pub warmup: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            reports: 5_000,
            concurrency: 8,
            warmup: 200,
        }
    }
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// `postgres` or `sqlite`.
    pub storage: &'static str,
    /// Measured reports.
    pub reports: usize,
    /// In flight at once.
    pub concurrency: usize,
    /// Reports that failed (should be 0).
    pub errors: u64,
    /// Accepted reports per second through `ReportStatus`.
    pub report_status_per_s: f64,
    /// Latency percentiles in milliseconds: p50, p99, max.
    pub latency_ms: (f64, f64, f64),
    /// The same writes as plain SQL transactions, per second.
    pub raw_inserts_per_s: f64,
    /// Every measured phase started right after a checkpoint.
    pub checkpointed: bool,
}

impl BenchReport {
    /// `ReportStatus` throughput as a fraction of the raw insert rate.
    pub fn ratio(&self) -> f64 {
        if self.raw_inserts_per_s > 0.0 {
            self.report_status_per_s / self.raw_inserts_per_s
        } else {
            0.0
        }
    }

    /// One JSON object, like the other benches' `--json`.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"benchmark\":\"report\",\"storage\":\"{}\",\"reports\":{},\"concurrency\":{},\"errors\":{},\"report_status_per_s\":{:.1},\"latency_ms\":{{\"p50\":{:.3},\"p99\":{:.3},\"max\":{:.3}}},\"raw_inserts_per_s\":{:.1},\"ratio_to_raw\":{:.3},\"checkpointed\":{}}}",
            self.storage,
            self.reports,
            self.concurrency,
            self.errors,
            self.report_status_per_s,
            self.latency_ms.0,
            self.latency_ms.1,
            self.latency_ms.2,
            self.raw_inserts_per_s,
            self.ratio(),
            self.checkpointed
        )
    }

    /// For people.
    pub fn to_text(&self) -> String {
        format!(
            "ReportStatus (signature checks on, {}, {} in flight): {:.0} reports/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} errors\n\
             raw inserts (the same writes as plain SQL, one transaction each, same concurrency): {:.0}/s\n\
             ReportStatus / raw: {:.0} %{}",
            self.storage,
            self.concurrency,
            self.report_status_per_s,
            self.latency_ms.0,
            self.latency_ms.1,
            self.latency_ms.2,
            self.errors,
            self.raw_inserts_per_s,
            self.ratio() * 100.0,
            if self.checkpointed {
                ""
            } else {
                " (phases not started after a checkpoint: the role may not CHECKPOINT)"
            }
        )
    }
}

/// Turns the limit and `ReportStatus` take: the machine's speed drifts within a run (its
/// commit latency varies by half within minutes), and in turns the drift falls on both alike.
const ROUNDS: usize = 5;

/// Runs the bench on `db` (Postgres or SQLite; it adds a partner, a key and orders).
pub async fn report_bench(
    db: &Database,
    options: &BenchOptions,
) -> Result<BenchReport, BenchError> {
    let backend = db.backend();
    let storage = match backend {
        Backend::Postgres(_) => "postgres",
        Backend::Sqlite(_) => "sqlite",
    };
    let concurrency = options.concurrency.max(1);
    let now = truncate_to_micros(Utc::now());
    let partner = format!("bench-{}", &Uuid::new_v4().simple().to_string()[..12]);
    let signer = TokenSigner::new(
        SigningKey::from_bytes(&rand::random::<[u8; 32]>()),
        "bench-key",
    );
    fixture::enrol(backend, &partner, &signer, now).await?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(waybill_status_ingest::serve(
        listener,
        IngestDeps::new(db, AUDIENCE),
        ServerLimits::default(),
        shutdown.clone(),
    ));
    let mut clients = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        clients.push(StatusIngestClient::connect(format!("http://{addr}")).await?);
    }
    let warm_orders = fixture::routed_orders(backend, &partner, options.warmup, now).await?;
    drive(&clients, signed_requests(&partner, &signer, &warm_orders)).await;

    // Each round: the limit on orders of its own, then as many reports through ReportStatus.
    let rounds = ROUNDS.min(options.reports).max(1);
    let (mut raw_elapsed, mut elapsed) = (Duration::ZERO, Duration::ZERO);
    let mut histogram: Option<Histogram<u64>> = None;
    let mut errors = 0;
    let mut checkpointed = true;
    for round in 0..rounds {
        let count = options.reports / rounds + usize::from(round < options.reports % rounds);
        let raw_orders = fixture::routed_orders(backend, &partner, count, now).await?;
        let orders = fixture::routed_orders(backend, &partner, count, now).await?;
        checkpointed &= fixture::checkpoint(backend).await;
        raw_elapsed += fixture::raw_inserts(backend, &partner, &raw_orders, concurrency).await?;
        // Signed before the clock starts: a partner signs on its own machine.
        let requests = signed_requests(&partner, &signer, &orders);
        checkpointed &= fixture::checkpoint(backend).await;
        let started = Instant::now();
        let (round_histogram, round_errors) = drive(&clients, requests).await;
        elapsed += started.elapsed();
        errors += round_errors;
        match (&mut histogram, round_histogram) {
            (Some(total), Some(round)) => {
                let _ = total.add(round);
            }
            (None, round) => histogram = round,
            (Some(_), None) => {}
        }
    }
    shutdown.cancel();
    let _ = server.await;
    let ms = |micros: u64| micros as f64 / 1000.0;
    Ok(BenchReport {
        storage,
        reports: options.reports,
        concurrency,
        errors,
        report_status_per_s: (options.reports as u64).saturating_sub(errors) as f64
            / elapsed.as_secs_f64().max(1e-9),
        latency_ms: histogram.map_or((0.0, 0.0, 0.0), |h| {
            (
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max()),
            )
        }),
        raw_inserts_per_s: options.reports as f64 / raw_elapsed.as_secs_f64().max(1e-9),
        checkpointed,
    })
}

/// One signed first SHIPPED report per order, as a partner would send it.
fn signed_requests(
    partner: &str,
    signer: &TokenSigner,
    orders: &[Uuid],
) -> Vec<ReportStatusRequest> {
    orders
        .iter()
        .map(|order| {
            let now = truncate_to_micros(Utc::now());
            let report = Report {
                partner_id: partner.to_owned(),
                order_id: order.to_string(),
                report_id: format!("bench-{order}"),
                status: OrderStatus::Shipped.short_name().to_owned(),
                tracking_id: "BENCH".to_owned(),
                detail: String::new(),
                detail_code: String::new(),
                action_required: false,
                occurred_at: now,
            };
            let token = signer.sign(&ReportClaims::new(
                &report,
                AUDIENCE,
                now,
                120,
                Uuid::new_v4().to_string(),
            ));
            ReportStatusRequest {
                correlation_id: report.order_id,
                partner_id: report.partner_id,
                report_id: report.report_id,
                status: OrderStatus::Shipped.into(),
                tracking_id: report.tracking_id,
                occurred_at: Some(to_timestamp(now)),
                token,
                ..Default::default()
            }
        })
        .collect()
}

/// Sends `requests` over `clients`, one at a time on each; latency histogram (µs) and errors.
async fn drive(
    clients: &[StatusIngestClient<tonic::transport::Channel>],
    requests: Vec<ReportStatusRequest>,
) -> (Option<Histogram<u64>>, u64) {
    let requests = Arc::new(std::sync::Mutex::new(requests.into_iter()));
    let tasks: Vec<_> = clients
        .iter()
        .map(|client| {
            let (mut client, requests) = (client.clone(), Arc::clone(&requests));
            tokio::spawn(async move {
                // 1 µs .. 60 s at 3 significant digits (constant, valid bounds).
                let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
                let mut errors = 0_u64;
                loop {
                    let next = requests
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .next();
                    let Some(request) = next else {
                        break;
                    };
                    let started = Instant::now();
                    match client.report_status(request).await {
                        Ok(_) => {
                            if let Some(histogram) = histogram.as_mut() {
                                let micros = u64::try_from(started.elapsed().as_micros())
                                    .unwrap_or(u64::MAX);
                                let _ = histogram.record(micros.max(1));
                            }
                        }
                        Err(_) => errors += 1,
                    }
                }
                (histogram, errors)
            })
        })
        .collect();
    let mut total: Option<Histogram<u64>> = None;
    let mut errors = 0;
    for task in tasks {
        if let Ok((histogram, task_errors)) = task.await {
            errors += task_errors;
            match (&mut total, histogram) {
                (Some(total), Some(histogram)) => {
                    let _ = total.add(histogram);
                }
                (None, histogram) => total = histogram,
                (Some(_), None) => {}
            }
        }
    }
    (total, errors)
}
