//! `waybill bench report`: `ReportStatus` with every check on, next to the same writes as plain
//! SQL, on `--database-url`: [`measure`] runs both sides against an in-process StatusIngest,
//! [`fixture`] makes the orders and the raw writes.

mod error;
mod fixture;
mod measure;
#[cfg(test)]
mod tests;

pub(crate) use measure::{BenchOptions, report_bench};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use waybill_service_kit::db::{Database, PoolSettings};

/// Settings of `waybill bench report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Database to run on, `postgres://…` or `sqlite://PATH` (use a dedicated database: the
    /// bench adds a partner, a key and orders).
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

/// Runs `waybill bench report`.
pub async fn run(args: ReportArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    let shutdown = CancellationToken::new();
    let db = Database::connect(
        &args.database_url,
        &pool_settings(args.concurrency),
        shutdown.clone(),
    )
    .await
    .context("cannot open the bench database")?;
    let options = BenchOptions {
        reports: args.reports,
        concurrency: args.concurrency,
        warmup: args.warmup,
    };
    let report = report_bench(&db, &options).await;
    shutdown.cancel();
    db.close().await;
    let report = report?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{}", report.to_text());
    }
    Ok(())
}

/// The pool `bench report` measures on: two connections per request in flight (the RPC side's
/// server and the raw side share it), at least eight.
pub(crate) fn pool_settings(concurrency: usize) -> PoolSettings {
    PoolSettings {
        max_connections: u32::try_from(concurrency.max(4) * 2).unwrap_or(64),
        ..PoolSettings::default()
    }
}
