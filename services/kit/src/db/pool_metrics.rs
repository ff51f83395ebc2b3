//! The database pool's series, read from the pool itself at each scrape (sqlx keeps the counts;
//! nothing is sampled in between), registered once per pool by [`Database::register_metrics`]
//! under `waybill_db_pool`:
//!
//! | series | what |
//! | --- | --- |
//! | `waybill_db_pool_connections{state}` | open connections: `in_use` (lent to a statement or transaction) and `idle` |
//! | `waybill_db_pool_max_connections` | the pool's bound (`--db-max-connections`; SQLite: 4) |
//! | `waybill_db_pool_acquire_timeouts_total` | database calls that found no free connection within the acquire timeout (5 s) and failed `UNAVAILABLE` |
//!
//! `in_use` at `max_connections` means callers are queueing for a connection; a rising
//! `acquire_timeouts_total` means some waited longer than the bound and failed.
//!
//! sqlx has no hook on a timed-out acquire: the timeouts are counted where every store
//! classifies its database errors ([`classify`](super::classify)), which each store does once
//! per failed call. The count is the process's (a process normally holds one pool; in-process
//! tests that run several services over several pools see their sum in each).
//!
//! [`Database::register_metrics`]: super::Database::register_metrics

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::backend::Backend;
use crate::metrics::Metrics;

/// The prefix of every pool series.
pub const PREFIX: &str = "waybill_db_pool";

/// Acquire timeouts in this process (see the module docs).
static ACQUIRE_TIMEOUTS: AtomicU64 = AtomicU64::new(0);

/// Counts `error` if it is a timed-out acquire.
pub(super) fn note(error: &sqlx::Error) {
    if matches!(error, sqlx::Error::PoolTimedOut) {
        ACQUIRE_TIMEOUTS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Registers `backend`'s pool series in `metrics`, once per pool (services that share a pool
/// share its series).
pub fn register(metrics: &Metrics, backend: &Backend) {
    let collector = PoolCollector::new(backend.clone());
    metrics.register(PREFIX, |registry| {
        registry.register_collector(Box::new(collector));
    });
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: &'static str,
}

/// What the pool says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    in_use: u32,
    idle: u32,
    max: u32,
}

fn sample(backend: &Backend) -> Sample {
    let (size, idle, max) = crate::on_pool!(backend, |pool| (
        pool.size(),
        u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
        pool.options().get_max_connections()
    ));
    Sample {
        // Counted at slightly different instants: a connection returned in between is idle
        // and still in the size, never less than nothing in use.
        in_use: size.saturating_sub(idle),
        idle,
        max,
    }
}

/// Reads one pool when scraped.
#[derive(Debug)]
pub struct PoolCollector {
    backend: Backend,
}

impl PoolCollector {
    /// The collector of `backend`'s pool.
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = sample(&self.backend);
        let mut connections = encoder.encode_descriptor(
            "connections",
            "Open pooled database connections, by state: in_use (lent out) or idle",
            None,
            MetricType::Gauge,
        )?;
        for (state, value) in [("in_use", now.in_use), ("idle", now.idle)] {
            ConstGauge::new(i64::from(value))
                .encode(connections.encode_family(&State { state })?)?;
        }
        let max = encoder.encode_descriptor(
            "max_connections",
            "The pool's bound on open connections",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(now.max)).encode(max)?;
        let timeouts = encoder.encode_descriptor(
            "acquire_timeouts",
            "Database calls of this process that found no free pooled connection within the acquire timeout",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(ACQUIRE_TIMEOUTS.load(Ordering::Relaxed)).encode(timeouts)?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use sqlx::{pool::PoolOptions, postgres::PgPoolOptions, sqlite::SqlitePoolOptions};

    use super::*;
    use crate::db::classify;

    /// The pool's series as the registry renders them.
    async fn series(metrics: &Metrics) -> (String, Vec<(String, f64)>) {
        let text = metrics.render().await.unwrap();
        let samples = text
            .lines()
            .filter(|line| line.starts_with(PREFIX))
            .map(|line| {
                let (name, value) = line.rsplit_once(' ').unwrap();
                (name.to_owned(), value.parse().unwrap())
            })
            .collect();
        (text, samples)
    }

    fn value(samples: &[(String, f64)], name: &str) -> f64 {
        samples
            .iter()
            .find(|(series, _)| series == name)
            .map(|(_, value)| *value)
            .unwrap_or_else(|| panic!("no {name} in {samples:?}"))
    }

    /// A connection lent out is `in_use`, back in the pool `idle`; the bound is the pool's;
    /// a call that waited past the acquire timeout is counted once.
    async fn lends_and_returns<DB: sqlx::Database>(
        backend: Backend,
        pool: sqlx::Pool<DB>,
        max: u32,
    ) {
        let metrics = Metrics::new();
        register(&metrics, &backend);
        let (_, before) = series(&metrics).await;
        assert_eq!(
            value(&before, "waybill_db_pool_max_connections"),
            f64::from(max)
        );
        let mut held = Vec::new();
        for _ in 0..max {
            held.push(pool.acquire().await.unwrap());
        }
        let (text, busy) = series(&metrics).await;
        assert_eq!(
            value(&busy, r#"waybill_db_pool_connections{state="in_use"}"#),
            f64::from(max),
            "{text}"
        );
        assert_eq!(
            value(&busy, r#"waybill_db_pool_connections{state="idle"}"#),
            0.0
        );
        let timeouts = value(&busy, "waybill_db_pool_acquire_timeouts_total");
        // Every connection is lent out: the next caller times out, and is counted when its
        // error is classified, as every store does.
        let error = pool.acquire().await.unwrap_err();
        assert!(matches!(error, sqlx::Error::PoolTimedOut), "{error}");
        classify(&error);
        classify(&sqlx::Error::RowNotFound);
        let (_, after) = series(&metrics).await;
        assert!(
            value(&after, "waybill_db_pool_acquire_timeouts_total") > timeouts,
            "counted"
        );
        drop(held);
        // A dropped connection goes back to the pool in a task of its own.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let (text, returned) = loop {
            let (text, returned) = series(&metrics).await;
            if value(&returned, r#"waybill_db_pool_connections{state="in_use"}"#) == 0.0 {
                break (text, returned);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never returned: {text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            value(&returned, r#"waybill_db_pool_connections{state="idle"}"#),
            f64::from(max)
        );
        assert!(
            text.contains("# TYPE waybill_db_pool_acquire_timeouts counter"),
            "{text}"
        );
    }

    fn small<DB: sqlx::Database>(options: PoolOptions<DB>) -> PoolOptions<DB> {
        options
            .max_connections(2)
            .acquire_timeout(Duration::from_millis(200))
    }

    #[tokio::test]
    async fn sqlite_pool_in_use_idle_max_and_timeouts() {
        let pool = small(SqlitePoolOptions::new())
            .connect("sqlite::memory:")
            .await
            .unwrap();
        lends_and_returns(Backend::Sqlite(pool.clone()), pool, 2).await;
    }

    #[tokio::test]
    async fn postgres_pool_in_use_idle_max_and_timeouts() {
        let url = std::env::var("WAYBILL_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let pool = match small(PgPoolOptions::new()).connect(&url).await {
            Ok(pool) => pool,
            Err(error) if std::env::var("WAYBILL_REQUIRE_ALL").as_deref() != Ok("1") => {
                eprintln!("SKIPPED: no Postgres at {url}: {error}");
                return;
            }
            Err(error) => panic!("no Postgres at {url}: {error}"),
        };
        lends_and_returns(Backend::Postgres(pool.clone()), pool, 2).await;
    }
}
