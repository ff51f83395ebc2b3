//! `waybill bench report`: `ReportStatus` throughput and latency with every check on (token
//! parsing, key lookup, strict Ed25519 signature, claims, replay guard, routing, duplicate), over
//! gRPC on loopback against an in-process StatusIngest on Postgres — next to the limit measured
//! in the same run: the same writes (replay-guard row, order bump, history event, dispatch row
//! acknowledged) as plain SQL transactions at the same concurrency, with no checks.
//!
//! Each measured report is a first `SHIPPED` report on its own order routed to the bench
//! partner; the tokens are signed by the client (as partners do), outside the server's time.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use sqlx::PgPool;
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

use crate::IngestDeps;

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

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BenchError(String);

macro_rules! bench_error_from {
    ($($t:ty),*) => {$(impl From<$t> for BenchError {
        fn from(error: $t) -> Self { Self(error.to_string()) }
    })*};
}
bench_error_from!(sqlx::Error, std::io::Error, tonic::transport::Error);

/// The figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
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
            "{{\"benchmark\":\"report\",\"storage\":\"postgres\",\"reports\":{},\"concurrency\":{},\"errors\":{},\"report_status_per_s\":{:.1},\"latency_ms\":{{\"p50\":{:.3},\"p99\":{:.3},\"max\":{:.3}}},\"raw_inserts_per_s\":{:.1},\"ratio_to_raw\":{:.3}}}",
            self.reports,
            self.concurrency,
            self.errors,
            self.report_status_per_s,
            self.latency_ms.0,
            self.latency_ms.1,
            self.latency_ms.2,
            self.raw_inserts_per_s,
            self.ratio()
        )
    }

    /// For people.
    pub fn to_text(&self) -> String {
        format!(
            "ReportStatus (signature checks on, Postgres, {} in flight): {:.0} reports/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} errors\n\
             raw inserts (the same writes as plain SQL, same concurrency): {:.0}/s\n\
             ReportStatus / raw: {:.0} %",
            self.concurrency,
            self.report_status_per_s,
            self.latency_ms.0,
            self.latency_ms.1,
            self.latency_ms.2,
            self.errors,
            self.raw_inserts_per_s,
            self.ratio() * 100.0
        )
    }
}

/// Runs the bench on `db` (Postgres; it adds a partner, a key and orders).
pub async fn report_bench(
    db: &Database,
    options: &BenchOptions,
) -> Result<BenchReport, BenchError> {
    let Backend::Postgres(pool) = db.backend() else {
        return Err(BenchError(
            "bench report runs on Postgres (--database-url postgres://…)".to_owned(),
        ));
    };
    let concurrency = options.concurrency.max(1);
    let now = truncate_to_micros(Utc::now());
    let partner = format!("bench-{}", &Uuid::new_v4().simple().to_string()[..12]);
    let signer = TokenSigner::new(
        SigningKey::from_bytes(&rand::random::<[u8; 32]>()),
        "bench-key",
    );
    enrol(pool, &partner, &signer, now).await?;

    // The limit first, on orders of its own.
    let raw_orders = routed_orders(pool, &partner, options.reports, now).await?;
    let raw_per_s = raw_inserts(pool, &partner, &raw_orders, concurrency).await?;

    let warm_orders = routed_orders(pool, &partner, options.warmup, now).await?;
    let orders = routed_orders(pool, &partner, options.reports, now).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(crate::serve(
        listener,
        IngestDeps::new(db, AUDIENCE),
        ServerLimits::default(),
        shutdown.clone(),
    ));
    let mut clients = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        clients.push(StatusIngestClient::connect(format!("http://{addr}")).await?);
    }
    drive(&clients, &partner, &signer, &warm_orders).await;
    let started = Instant::now();
    let (histogram, errors) = drive(&clients, &partner, &signer, &orders).await;
    let elapsed = started.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = server.await;
    let ms = |micros: u64| micros as f64 / 1000.0;
    Ok(BenchReport {
        reports: options.reports,
        concurrency,
        errors,
        report_status_per_s: (options.reports as u64).saturating_sub(errors) as f64
            / elapsed.max(1e-9),
        latency_ms: histogram.map_or((0.0, 0.0, 0.0), |h| {
            (
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max()),
            )
        }),
        raw_inserts_per_s: raw_per_s,
    })
}

async fn enrol(
    pool: &PgPool,
    partner: &str,
    signer: &TokenSigner,
    now: DateTime<Utc>,
) -> Result<(), BenchError> {
    sqlx::query(
        "INSERT INTO partners (id, display_name, enabled, handover_deadline_ms, resend_budget, topic, created_at, updated_at) \
         VALUES ($1, 'bench partner', TRUE, 86400000, 0, 'waybill.partner.' || $1, $2, $2)",
    )
    .bind(partner)
    .bind(now)
    .execute(pool)
    .await?;
    sqlx::query("INSERT INTO partner_keys (partner_id, key_id, public_key, created_at) VALUES ($1, $2, $3, $4)")
        .bind(partner)
        .bind(signer.key_id())
        .bind(signer.verifying_key().to_bytes().to_vec())
        .bind(now)
        .execute(pool)
        .await?;
    Ok(())
}

/// `count` orders already sent to `partner` (as the relay leaves them), in one statement.
async fn routed_orders(
    pool: &PgPool,
    partner: &str,
    count: usize,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, BenchError> {
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "WITH ids AS (SELECT unnest($1::uuid[]) AS id), \
         o AS ( \
             INSERT INTO orders (id, idempotency_key, request_hash, customer_id, customer_name, customer_email, \
                 customer_phone, ship_line1, ship_line2, ship_city, ship_region, ship_postal_code, ship_country_code, \
                 currency_code, total_minor, region, partner_id, status, status_seq, placed_at) \
             SELECT id, id::text, '\\x00'::bytea, 'bench', 'Bench', 'bench@example.com', '', '1 Main St', '', \
                 'Springfield', '', '12345', 'US', 'USD', 1000, 'bench', $2, 'SENT_TO_PARTNER', 2, $3 FROM ids \
             RETURNING id), \
         e AS ( \
             INSERT INTO order_status_events (order_id, seq, status, partner_id, occurred_at, recorded_at, published_at) \
             SELECT o.id, s.seq, s.status, CASE WHEN s.seq = 2 THEN $2 ELSE '' END, $3, $3, $3 \
             FROM o CROSS JOIN (VALUES (1, 'PLACED'), (2, 'SENT_TO_PARTNER')) AS s (seq, status)) \
         INSERT INTO dispatch (order_id, state, next_attempt_at, partner_id, route_id, sent_at, ack_due_at, created_at, updated_at) \
         SELECT id, 'SENT', $3, $2, 'bench', $3, $3 + interval '1 day', $3, $3 FROM o",
    )
    .bind(&ids)
    .bind(partner)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(ids)
}

/// The same writes as an accepted first SHIPPED report, as plain SQL, `concurrency` at a time.
async fn raw_inserts(
    pool: &PgPool,
    partner: &str,
    orders: &[Uuid],
    concurrency: usize,
) -> Result<f64, BenchError> {
    let next = Arc::new(AtomicUsize::new(0));
    let orders: Arc<[Uuid]> = orders.into();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (pool, next, orders, partner) = (
            pool.clone(),
            next.clone(),
            orders.clone(),
            partner.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(order) = orders.get(index).copied() else { return Ok::<_, sqlx::Error>(()) };
                let now = Utc::now();
                let mut tx = waybill_service_kit::db::begin(&pool).await?;
                sqlx::query("INSERT INTO report_token_ids (partner_id, jti, expires_at) VALUES ($1, $2, $3)")
                    .bind(&partner).bind(Uuid::new_v4().to_string()).bind(now + chrono::Duration::minutes(3))
                    .execute(&mut *tx).await?;
                let seq: i64 = sqlx::query_scalar(
                    "UPDATE orders SET status_seq = status_seq + 1, status = 'SHIPPED', tracking_id = 'BENCH' WHERE id = $1 RETURNING status_seq",
                )
                .bind(order).fetch_one(&mut *tx).await?;
                sqlx::query(
                    "INSERT INTO order_status_events (order_id, seq, status, partner_id, tracking_id, report_id, occurred_at, recorded_at) \
                     VALUES ($1, $2, 'SHIPPED', $3, 'BENCH', $4, $5, $5)",
                )
                .bind(order).bind(seq).bind(&partner).bind(format!("raw-{order}")).bind(now)
                .execute(&mut *tx).await?;
                sqlx::query("UPDATE dispatch SET state = 'ACKNOWLEDGED', ack_due_at = NULL, updated_at = $2 WHERE order_id = $1")
                    .bind(order).bind(now).execute(&mut *tx).await?;
                tx.commit().await?;
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| BenchError(e.to_string()))??;
    }
    Ok(orders.len() as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// Sends one signed SHIPPED report per order over `clients`; latency histogram (µs) and errors.
async fn drive(
    clients: &[StatusIngestClient<tonic::transport::Channel>],
    partner: &str,
    signer: &TokenSigner,
    orders: &[Uuid],
) -> (Option<Histogram<u64>>, u64) {
    let next = Arc::new(AtomicUsize::new(0));
    let orders: Arc<[Uuid]> = orders.into();
    let tasks: Vec<_> = clients
        .iter()
        .map(|client| {
            let (mut client, next, orders, partner, signer) = (
                client.clone(),
                next.clone(),
                orders.clone(),
                partner.to_owned(),
                signer.clone(),
            );
            tokio::spawn(async move {
                // 1 µs .. 60 s at 3 significant digits (constant, valid bounds).
                let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
                let mut errors = 0_u64;
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(order) = orders.get(index).copied() else {
                        break;
                    };
                    let now = truncate_to_micros(Utc::now());
                    let report = Report {
                        partner_id: partner.clone(),
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
                    let request = ReportStatusRequest {
                        correlation_id: report.order_id,
                        partner_id: report.partner_id,
                        report_id: report.report_id,
                        status: OrderStatus::Shipped.into(),
                        tracking_id: report.tracking_id,
                        occurred_at: Some(to_timestamp(now)),
                        token,
                        ..Default::default()
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
