//! What records a batch of reports in one transaction, on the store's backend: Postgres
//! (`postgres.rs`) or SQLite (`sqlite.rs`); and a report left out of one, alone.

use std::time::Duration;

use sqlx::{Connection as _, PgConnection};
use tokio::time::Instant;
use waybill_service_kit::{
    clock::SharedClock,
    db::{Backend, ChangeFeed, Database, keyed_connection},
};

use super::{
    error::StoreError,
    model::{AuthenticatedReport, InBatch, ReportOutcome},
    postgres, sqlite,
};

/// The most reports one transaction records. On Postgres every report's savepoint that wrote
/// gets a subtransaction id, and a backend keeps 64 of them in shared memory: beyond that every
/// snapshot in the cluster has to look subtransactions up on disk.
pub const MAX_BATCH: usize = 64;

/// A held connection idle for longer than this is pinged before its next batch (as the pool
/// pings its own): it may have been closed by a database restart or an idle timeout since.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// The writer's own Postgres connection, outside the pool, its session planning every
/// statement by key (the kit's `keyed_connection`): opened for the first batch, kept while
/// batches succeed, dropped after one that did not (a new one is opened for the next), and
/// pinged before a batch when it sat idle. A batch on it costs no pool round trips (a pooled
/// connection is pinged twice as it goes back). SQLite needs none.
#[derive(Debug, Default)]
pub(super) struct Session {
    held: Option<(PgConnection, Instant)>,
}

/// What records a batch: the pool, the change feed and the clock.
#[derive(Debug, Clone)]
pub(super) struct Batches {
    db: Backend,
    /// Commits announced in this process (SQLite has no `NOTIFY`; on Postgres the batch's
    /// transaction `NOTIFY`s itself).
    feed: ChangeFeed,
    /// Where `recorded_at` comes from.
    clock: SharedClock,
}

impl Batches {
    /// Batches on `db` (already migrated) that record times from `clock`.
    pub(super) fn new(db: &Database, clock: SharedClock) -> Self {
        Self {
            db: db.backend().clone(),
            feed: db.feed().clone(),
            clock,
        }
    }

    /// The backend's pool.
    pub(super) fn backend(&self) -> &Backend {
        &self.db
    }

    /// See [`SqlIngestStore::record_batch`](super::SqlIngestStore::record_batch); on Postgres
    /// on `session`'s connection.
    pub(super) async fn record(
        &self,
        session: &mut Session,
        reports: &[AuthenticatedReport],
    ) -> Result<Vec<InBatch>, StoreError> {
        debug_assert!(reports.len() <= MAX_BATCH);
        match &self.db {
            Backend::Postgres(pool) => {
                // Taken out for the batch and put back only when it succeeded: a batch that
                // failed, or was given up (dropped), leaves no connection behind.
                let mut conn = match session.held.take() {
                    Some((mut conn, used)) if used.elapsed() >= PING_IF_IDLE_FOR => {
                        match conn.ping().await {
                            Ok(()) => conn,
                            Err(error) => {
                                tracing::debug!(%error, "the writer's connection went away while idle; opening another");
                                keyed_connection(pool).await?
                            }
                        }
                    }
                    Some((conn, _)) => conn,
                    None => keyed_connection(pool).await?,
                };
                let recorded = postgres::record_batch(&mut conn, &self.clock, reports).await;
                if recorded.is_ok() {
                    session.held = Some((conn, Instant::now()));
                }
                recorded
            }
            Backend::Sqlite(pool) => {
                sqlite::record_batch(pool, &self.feed, &self.clock, reports).await
            }
        }
    }

    /// Records `report` in a transaction of its own that waits for its rows (one left out of a
    /// batch).
    pub(super) async fn record_alone(
        &self,
        report: &AuthenticatedReport,
    ) -> Result<ReportOutcome, StoreError> {
        match &self.db {
            Backend::Postgres(pool) => postgres::record_alone(pool, &self.clock, report).await,
            // SQLite's batch waits for the database's one write lock and leaves nothing out; if
            // it ever did, a batch of one is a transaction of its own.
            Backend::Sqlite(_) => match self
                .record(&mut Session::default(), std::slice::from_ref(report))
                .await?
                .pop()
            {
                Some(InBatch::Decided(outcome)) => Ok(outcome),
                Some(InBatch::Failed(error)) => Err(error),
                Some(InBatch::LeftOut) | None => Err(StoreError::Corrupt(
                    "a batch of one left its report out".to_owned(),
                )),
            },
        }
    }
}
