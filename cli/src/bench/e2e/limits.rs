//! The bare limits `--find-max` sets the loop's rate beside, measured in the same run on the
//! same database (Postgres: both are defined there), right before the steps and right after
//! them while the loop is stopped, so the machine's drift falls on them as on the loop:
//!
//! - **the relay's bare bookkeeping**, as `bench drain` measures it (`limit.rs`: lease 1,000 due
//!   rows, mark them `SENT`, append an event each; plain SQL on one connection);
//! - **the report's raw writes**, as `bench report` measures them (StatusIngest's own bench:
//!   replay-guard row, order bump, history event, dispatch row, plain SQL, 8 at once; its
//!   `ReportStatus` side runs too and is reported for context).

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use waybill_dispatcher::kafka::TopicNames;
use waybill_service_kit::db::{Backend, Database};

use crate::bench::{
    limit::{BenchRoute, BookkeepingLimit},
    measure::Rate,
    report::{BenchOptions, pool_settings, report_bench},
};

/// How far from now the bookkeeping limit's orders are placed: the run after the steps takes
/// the later ones, not due for the loop's relay for a day.
const AHEAD: chrono::Duration = chrono::Duration::days(1);
/// Reports in flight at once on the raw side (as `bench report`'s default).
const CONCURRENCY: usize = 8;

/// The limits' figures.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct LimitFigures {
    /// Both runs of the bookkeeping together, and each.
    pub(super) bookkeeping: Option<Rate>,
    pub(super) bookkeeping_before: Option<Rate>,
    pub(super) bookkeeping_after: Option<Rate>,
    /// Both runs of the raw report writes together (as many writes in each), and each.
    pub(super) report_raw_per_s: Option<f64>,
    pub(super) report_raw_before_per_s: Option<f64>,
    pub(super) report_raw_after_per_s: Option<f64>,
    /// `ReportStatus` itself in the same runs (signature checks on), for context.
    pub(super) report_status_before_per_s: Option<f64>,
    pub(super) report_status_after_per_s: Option<f64>,
    /// Whether each bookkeeping run started right after a checkpoint.
    pub(super) checkpointed: Option<bool>,
}

impl LimitFigures {
    /// The lower of the two limits: its name and rate.
    pub(super) fn lower(&self) -> Option<(&'static str, f64)> {
        let bookkeeping = self.bookkeeping?.orders_per_second;
        let report = self.report_raw_per_s?;
        Some(if bookkeeping <= report {
            ("relay bookkeeping", bookkeeping)
        } else {
            ("report raw writes", report)
        })
    }
}

/// The limits' database and orders, ready to measure.
pub(super) struct Limits {
    db: Database,
    stop: CancellationToken,
    bookkeeping: BookkeepingLimit,
    reports: usize,
    pub(super) figures: LimitFigures,
}

impl Limits {
    /// Connects to `database_url` and places the bookkeeping limit's orders (`orders` per run);
    /// `None` on SQLite, where neither limit is defined.
    pub(super) async fn prepare(
        database_url: &str,
        orders: usize,
        reports: usize,
    ) -> anyhow::Result<Option<Self>> {
        if !database_url.starts_with("postgres") {
            return Ok(None);
        }
        let stop = CancellationToken::new();
        let db = Database::connect(database_url, &pool_settings(CONCURRENCY), stop.clone()).await?;
        let Backend::Postgres(pool) = db.backend() else {
            anyhow::bail!("{database_url} is not Postgres");
        };
        let pool = pool.clone();
        eprintln!("placing the bookkeeping limit's orders ({orders} a run)…");
        let run = Uuid::new_v4().simple().to_string();
        let store = waybill_dispatcher::store::for_database(&db);
        let names = TopicNames {
            partner_prefix: "waybill.bench.".to_owned(),
            ..TopicNames::default()
        };
        let now = chrono::Utc::now();
        let route = BenchRoute::enrol(&store, &names, &run, now).await?;
        let bookkeeping = BookkeepingLimit::place(
            &db,
            &pool,
            &route,
            &run,
            &format!("bench-{run}"),
            orders,
            12,
            AHEAD,
            now,
        )
        .await?;
        Ok(Some(Self {
            db,
            stop,
            bookkeeping,
            reports,
            figures: LimitFigures::default(),
        }))
    }

    /// Both limits, before the loop runs.
    pub(super) async fn before(&mut self) -> anyhow::Result<()> {
        eprintln!("measuring the bare limits (before the steps)…");
        let mut steal = None;
        self.figures.bookkeeping_before = Some(self.bookkeeping.before(&mut steal).await?);
        let (raw, status) = self.reports().await?;
        self.figures.report_raw_before_per_s = Some(raw);
        self.figures.report_status_before_per_s = Some(status);
        Ok(())
    }

    /// Both limits again, after the loop stopped; then the figures of both runs together.
    pub(super) async fn after(&mut self) -> anyhow::Result<()> {
        eprintln!("measuring the bare limits (after the steps)…");
        let mut steal = None;
        let after = self.bookkeeping.after(&mut steal).await?;
        self.figures.bookkeeping_after = Some(after);
        self.figures.bookkeeping = self.figures.bookkeeping_before.map(|b| b.plus(after));
        let (raw, status) = self.reports().await?;
        self.figures.report_raw_after_per_s = Some(raw);
        self.figures.report_status_after_per_s = Some(status);
        // As many writes in each run: both together is their harmonic mean.
        self.figures.report_raw_per_s = self
            .figures
            .report_raw_before_per_s
            .map(|before| 2.0 / (1.0 / before.max(1e-9) + 1.0 / raw.max(1e-9)));
        self.figures.checkpointed = self.bookkeeping.checkpointed();
        Ok(())
    }

    /// One run of StatusIngest's bench: raw writes and `ReportStatus`, per second.
    async fn reports(&self) -> anyhow::Result<(f64, f64)> {
        let options = BenchOptions {
            reports: self.reports,
            concurrency: CONCURRENCY,
            warmup: 200.min(self.reports),
        };
        let report = report_bench(&self.db, &options).await?;
        anyhow::ensure!(
            report.errors == 0,
            "{} reports failed in the limit",
            report.errors
        );
        Ok((report.raw_inserts_per_s, report.report_status_per_s))
    }

    pub(super) async fn close(self) {
        self.stop.cancel();
        self.db.close().await;
    }
}
