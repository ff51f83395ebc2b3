//! What records a batch of reports in one transaction, on the store's backend: Postgres
//! (`postgres.rs`) or SQLite (`sqlite.rs`); and a report left out of one, alone.

use waybill_service_kit::{
    clock::SharedClock,
    db::{Backend, ChangeFeed, Database, HeldConnection},
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

/// The writer's own Postgres connection, outside the pool, its session planning every
/// statement by key (the kit's `HeldConnection`). SQLite needs none.
pub(super) type Session = HeldConnection;

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
                session
                    .run(pool, async |conn| {
                        postgres::record_batch(conn, &self.clock, reports).await
                    })
                    .await
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
