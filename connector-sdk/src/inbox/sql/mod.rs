//! [`SqlInbox`]: the inbox on SQLite or Postgres, one SQL text for both (`$N` parameters, which
//! both accept; instants as Unix microseconds in `BIGINT`, so one row struct decodes on both).
//!
//! The schema is created with `CREATE … IF NOT EXISTS` when the inbox opens, not with sqlx's
//! migrator: the inbox may live in a database of the partner's own whose `_sqlx_migrations`
//! table belongs to the partner's migrations. Tables are prefixed `waybill_inbox_`.
//!
//! - this module: [`SqlInbox`], opening it on either backend and the backend-specific steps
//!   (SQLite's file and journal settings, Postgres's pool, creating the schema under an
//!   advisory lock on Postgres);
//! - `rows`: the schema, the statements and column lists used by several methods, the row
//!   structs and the instant encoding;
//! - `store`: the [`Inbox`](super::Inbox) implementation, one SQL text per method for both backends;
//! - `group`: the writer every write goes through (group commit: one transaction, one flush, per
//!   batch of whatever writes are queued).

use std::{path::Path, str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    PgPool, Postgres, Sqlite, SqlitePool,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use crate::{
    clock::{SharedClock, SystemClock},
    inbox::error::InboxError,
};
use rows::SCHEMA;

/// The pool (reads, schema) and the writer every write goes through (`group`).
#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool, Writer<Sqlite>),
    Postgres(PgPool, Writer<Postgres>),
}

/// Runs the same query-building code against whichever pool this is (reads).
macro_rules! on_pool {
    ($inbox:expr, |$pool:ident| $body:expr) => {
        match &$inbox.pool {
            Pool::Sqlite($pool, _) => $body,
            Pool::Postgres($pool, _) => $body,
        }
    };
}

/// Runs the same statements as one write of the next group commit, on whichever backend this
/// is; `$body` is an async block's body using `$conn` (a `&mut` connection inside the batch's
/// transaction) and evaluating to `Result<T, InboxError>`. Evaluates to that result once the
/// batch committed.
macro_rules! write {
    ($inbox:expr, move |$conn:ident| $body:expr) => {
        match &$inbox.pool {
            Pool::Sqlite(_, writer) => {
                writer
                    .write(move |$conn| Box::pin(async move { $body }))
                    .await
            }
            Pool::Postgres(_, writer) => {
                writer
                    .write(move |$conn| Box::pin(async move { $body }))
                    .await
            }
        }
    };
}

mod group;
mod rows;
mod store;

use group::Writer;

/// The inbox on SQLite or Postgres.
#[derive(Debug, Clone)]
pub struct SqlInbox {
    pool: Pool,
    /// Where the time stamps it keeps come from.
    clock: SharedClock,
}

impl SqlInbox {
    /// Opens (creating if needed) the SQLite inbox at `path`: WAL journal, `synchronous=FULL`
    /// (an answer the SDK stored must survive a power cut, or a redelivery would call the
    /// adapter again).
    pub async fn open_sqlite(path: impl AsRef<Path>) -> Result<Self, InboxError> {
        let path = path.as_ref();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| InboxError::Directory {
                path: parent.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            // 1 MiB of page cache a connection, not SQLite's 2 MiB: the hot pages are the
            // tables' and indexes' right edges (new deliveries) and the rows in flight; older
            // pages come from the OS's file cache. Four full caches at the default are 8 MiB
            // of a connector meant to stay under 64 MiB with a partner minutes behind.
            .pragma("cache_size", "-1024");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        let writer = Writer::start(pool.clone());
        let inbox = Self {
            pool: Pool::Sqlite(pool, writer),
            clock: Arc::new(SystemClock),
        };
        inbox.create_schema().await?;
        Ok(inbox)
    }

    /// Connects to a Postgres inbox (`postgres://…`) and creates its tables if needed.
    pub async fn connect_postgres(url: &str) -> Result<Self, InboxError> {
        let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        let writer = Writer::start(pool.clone());
        let inbox = Self {
            pool: Pool::Postgres(pool, writer),
            clock: Arc::new(SystemClock),
        };
        inbox.create_schema().await?;
        Ok(inbox)
    }

    /// Opens the inbox a URL names: `postgres://…`/`postgresql://…`, `sqlite://PATH` or a bare
    /// file path (SQLite).
    pub async fn open(url: &str) -> Result<Self, InboxError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::connect_postgres(url).await
        } else {
            Self::open_sqlite(url.strip_prefix("sqlite://").unwrap_or(url)).await
        }
    }

    /// The same inbox, its time stamps (deliveries, answers, reports) read from `clock`
    /// (the connector's, when it opens the inbox).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Now, as the inbox stores instants.
    fn now_micros(&self) -> i64 {
        rows::micros(self.clock.now())
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        on_pool!(self, |pool| pool.close().await);
    }

    async fn create_schema(&self) -> Result<(), InboxError> {
        match &self.pool {
            Pool::Sqlite(pool, _) => {
                for statement in SCHEMA {
                    sqlx::query(statement).execute(pool).await?;
                }
            }
            Pool::Postgres(pool, _) => {
                // Two instances starting together would race on the catalog: serialise them.
                let mut tx = begin(pool).await?;
                sqlx::query("SELECT pg_advisory_xact_lock(4207319520)")
                    .execute(&mut *tx)
                    .await?;
                for statement in SCHEMA {
                    sqlx::query(statement).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

/// Begins a transaction on `pool` in a task of its own, so that a caller cancelled while the
/// `BEGIN` is answered cannot leave the pooled Postgres session inside a transaction (sqlx 0.8
/// counts the transaction only once `BEGIN` is answered; the services' kit does the same).
async fn begin<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
) -> Result<sqlx::Transaction<'static, DB>, InboxError> {
    let pool = pool.clone();
    #[allow(clippy::disallowed_methods)] // the SDK's one `Pool::begin`, in a task of its own
    let begun = tokio::spawn(async move { pool.begin().await }).await;
    begun
        .map_err(|_| InboxError::Closed("the runtime stopped while a transaction began"))?
        .map_err(InboxError::from)
}
