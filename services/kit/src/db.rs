//! One database URL, two backends: Postgres in production, SQLite as the embedded default.
//!
//! The three services share one schema (an order, its history and its dispatch row are written
//! together), so the migrations live here, one folder per backend, embedded in the binary.
//!
//! [`ChangeFeed`] tells waiting parties that something was committed: the dispatcher that the
//! outbox has new rows, `WatchOrder` streams that an order's history grew. Writers in this process
//! publish after commit; on Postgres a listener also relays `NOTIFY`s sent by other processes.
//! A notification is only a hint to look again: receivers always re-read the database.

use std::{str::FromStr, time::Duration};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgListener},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;

mod backend;
pub mod dispatch_moves;
mod failure;
mod keyed;
mod order_lines;
mod pg_pool;
mod pool_metrics;
mod schema;
mod value;
mod write_gate;

pub use self::{
    backend::{Backend, PoolSettings, Statement},
    failure::{Failure, classify, within},
    keyed::{HeldConnection, KEYED_PLANS, keyed_connection, keyed_plans_locally},
    order_lines::{OrderLineRow, lines_of},
    pg_pool::{begin, begin_with},
    pool_metrics::{PoolCollector, register as register_pool_metrics},
    schema::{Migration, SchemaArgs, SchemaError, SchemaPolicy, SchemaStatus},
    value::{Id, IdList, Instant, TextList},
    write_gate::{WriteTurn, sqlite_write_turn},
};

/// Postgres `NOTIFY` channel: payload is the order id whose status history grew, or several
/// of them comma-separated (a writer of many histories at once, such as the relay).
pub const ORDER_STATUS_CHANNEL: &str = "waybill_order_status";
/// Postgres `NOTIFY` channel: the outbox has new due rows (payload empty).
pub const OUTBOX_CHANNEL: &str = "waybill_outbox";

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// Why the database could not be reached or prepared.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL is neither `postgres://…` nor `sqlite:…`, or is malformed.
    #[error("invalid database url: {0}")]
    InvalidUrl(String),
    /// Connecting failed (the driver's error is in the message, so it is not also a `source`:
    /// printed with its chain, the cause appears once).
    #[error("cannot connect to the database: {0}")]
    Connect(sqlx::Error),
    /// The schema could not be read or brought up to date, or is behind this binary and the
    /// policy is [`SchemaPolicy::Require`] (the message names the migrations and the remedy).
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// Runs the same query-building code against whichever pool a [`Backend`]
/// holds: `on_pool!(backend, |pool| …)`, or with a [`Statement`] whose text for that backend is
/// bound to `sql`: `on_pool!(backend, STATEMENT, |pool, sql| …)`. The body is compiled once per
/// backend, so everything it binds and decodes must work on both (see [`Id`], [`Instant`]).
#[macro_export]
macro_rules! on_pool {
    ($backend:expr, |$pool:ident| $body:expr) => {
        match $backend {
            $crate::db::Backend::Postgres($pool) => $body,
            $crate::db::Backend::Sqlite($pool) => $body,
        }
    };
    ($backend:expr, $statement:expr, |$pool:ident, $sql:ident| $body:expr) => {
        match $backend {
            $crate::db::Backend::Postgres($pool) => {
                let $sql = $statement.postgres;
                $body
            }
            $crate::db::Backend::Sqlite($pool) => {
                let $sql = $statement.sqlite;
                $body
            }
        }
    };
}

/// A connected, migrated database.
#[derive(Debug, Clone)]
pub struct Database {
    backend: Backend,
    feed: ChangeFeed,
    /// Where it is, for logs: never the password.
    location: String,
    /// Where the schema stood once connected (after migrating, under the default policy).
    schema: SchemaStatus,
}

impl Database {
    /// Connects to `url` (`postgres://…` or `sqlite:…`/`sqlite://…`) and applies the pending
    /// migrations, or checks that none is pending, or neither, as [`PoolSettings::schema`] says.
    ///
    /// For SQLite the file is created if missing. On Postgres, a background task relays the
    /// `NOTIFY`s of other processes into [`Database::feed`] until `shutdown` is cancelled.
    pub async fn connect(
        url: &str,
        settings: &PoolSettings,
        shutdown: CancellationToken,
    ) -> Result<Self, DbError> {
        let feed = ChangeFeed::new();
        let location;
        let backend = if is_postgres_url(url) {
            // No JIT: every statement here is short, and compiling one costs far more than it
            // saves. Measured: the relay's handover-deadline scan, estimated over the JIT
            // threshold from its worst case, spent 660 ms compiling (inlining and optimising)
            // to find nothing, once per poll interval.
            let options = PgConnectOptions::from_str(url)
                .map_err(|e| DbError::InvalidUrl(e.to_string()))?
                .options([("jit", "off")]);
            location = format!(
                "postgres {}:{}/{} (sslmode {})",
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or(options.get_username()),
                ssl_mode_name(options.get_ssl_mode())
            );
            let pool = pg_pool::connect(options, settings, shutdown.clone())
                .await
                .map_err(DbError::Connect)?;
            spawn_pg_relay(&pool, feed.clone(), shutdown)
                .await
                .map_err(DbError::Connect)?;
            Backend::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| DbError::InvalidUrl(e.to_string()))?
                .create_if_missing(true)
                .foreign_keys(true)
                // WAL lets readers proceed while one writer commits; NORMAL sync is durable in
                // WAL mode except for the last transactions on power loss.
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10));
            let file = options.get_filename();
            location = format!("sqlite {}", file.display());
            if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| {
                    DbError::InvalidUrl(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
            let pool = SqlitePoolOptions::new()
                // SQLite has one writer at a time; a few connections serve concurrent reads.
                .max_connections(4)
                .acquire_timeout(settings.acquire_timeout)
                .connect_with(options)
                .await
                .map_err(DbError::Connect)?;
            Backend::Sqlite(pool)
        } else {
            return Err(DbError::InvalidUrl(format!(
                "{url:?}: expected postgres://… or sqlite://…"
            )));
        };
        let mut db = Self {
            backend,
            feed,
            location,
            schema: SchemaStatus::default(),
        };
        // Migrating reads the schema under the migration lock and again once done: no read
        // before it.
        match settings.schema {
            SchemaPolicy::Migrate => {
                db.migrate().await?;
            }
            SchemaPolicy::Leave => db.schema = db.schema_status().await?,
            SchemaPolicy::Require => {
                db.schema = db.schema_status().await?;
                schema::refuse_unusable(&db.schema)?;
                if !db.schema.pending.is_empty() {
                    return Err(SchemaError::Behind(db.schema.pending.clone()).into());
                }
            }
        }
        if !db.schema.newer.is_empty() {
            warn!(
                database = %db.location,
                newer = ?db.schema.newer,
                "the database schema is newer than this binary (migrated by a newer version): \
                 running on it, as migrations only add; upgrade this binary"
            );
        }
        Ok(db)
    }

    /// Where the schema stands against this binary's migrations, read now (nothing written).
    pub async fn schema_status(&self) -> Result<SchemaStatus, SchemaError> {
        let has_table = self.has_migrations_table().await?;
        match &self.backend {
            Backend::Postgres(pool) => {
                let mut conn = pool
                    .acquire()
                    .await
                    .map_err(sqlx::migrate::MigrateError::from)?;
                schema::status(&mut *conn, &POSTGRES_MIGRATIONS, has_table).await
            }
            Backend::Sqlite(pool) => {
                let mut conn = pool
                    .acquire()
                    .await
                    .map_err(sqlx::migrate::MigrateError::from)?;
                schema::status(&mut *conn, &SQLITE_MIGRATIONS, has_table).await
            }
        }
    }

    /// Applies this binary's pending migrations (under the database's migration lock, so
    /// processes starting together take turns) and returns those this call applied.
    pub async fn migrate(&mut self) -> Result<Vec<Migration>, SchemaError> {
        let applied = match &self.backend {
            Backend::Postgres(pool) => {
                let mut conn = pool
                    .acquire()
                    .await
                    .map_err(sqlx::migrate::MigrateError::from)?;
                schema::migrate(&mut *conn, &POSTGRES_MIGRATIONS).await?
            }
            Backend::Sqlite(pool) => {
                let mut conn = pool
                    .acquire()
                    .await
                    .map_err(sqlx::migrate::MigrateError::from)?;
                schema::migrate(&mut *conn, &SQLITE_MIGRATIONS).await?
            }
        };
        self.schema = self.schema_status().await?;
        Ok(applied)
    }

    /// Whether sqlx's bookkeeping table exists (asked without creating it).
    async fn has_migrations_table(&self) -> Result<bool, SchemaError> {
        let found: Result<bool, sqlx::Error> = match &self.backend {
            Backend::Postgres(pool) => {
                sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                    .fetch_one(pool)
                    .await
            }
            Backend::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT count(*) > 0 FROM sqlite_master \
                 WHERE type = 'table' AND name = '_sqlx_migrations'",
                )
                .fetch_one(pool)
                .await
            }
        };
        Ok(found.map_err(sqlx::migrate::MigrateError::from)?)
    }

    /// Where the database is, for logs: backend, host, port and name (Postgres, with its
    /// `sslmode`) or file (SQLite); never a password.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The schema version: the newest migration the database had once connected.
    pub fn schema_version(&self) -> i64 {
        self.schema.version()
    }

    /// Where the schema stood once connected (or after [`Database::migrate`]).
    pub fn schema(&self) -> &SchemaStatus {
        &self.schema
    }

    /// The backend's pool.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Commit notifications, shared by everything in this process that uses this database.
    pub fn feed(&self) -> &ChangeFeed {
        &self.feed
    }

    /// Registers the pool's series (`waybill_db_pool_*`: connections in use and idle, the
    /// bound, acquire timeouts; see `db/pool_metrics.rs`) in `metrics`, read from the pool at
    /// each scrape. Once per pool: services that share a [`Database`] share its series.
    pub fn register_metrics(&self, metrics: &crate::metrics::Metrics) {
        register_pool_metrics(metrics, &self.backend);
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Postgres(pool) => pool.close().await,
            Backend::Sqlite(pool) => pool.close().await,
        }
    }
}

fn ssl_mode_name(mode: sqlx::postgres::PgSslMode) -> &'static str {
    use sqlx::postgres::PgSslMode;
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// Whether `url` names a Postgres database (`postgres://…` or `postgresql://…`); anything else
/// is taken for SQLite.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// A commit notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The status history of this order grew.
    OrderStatus(Uuid),
    /// The outbox has new rows due.
    Outbox,
}

/// Fan-out of [`Change`]s to every interested task in the process.
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    sender: broadcast::Sender<Change>,
}

impl ChangeFeed {
    fn new() -> Self {
        // Receivers that fall behind get `Lagged` and simply re-read the database.
        let (sender, _) = broadcast::channel(1024);
        Self { sender }
    }

    /// Tells every subscriber; call after the commit.
    pub fn publish(&self, change: Change) {
        // No subscriber is fine: nobody is waiting.
        let _ = self.sender.send(change);
    }

    /// A receiver of every change published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.sender.subscribe()
    }
}

/// Relays Postgres notifications from other processes into `feed`. Listening starts before this
/// returns, so nothing committed after `connect` is missed; `PgListener` reconnects by itself
/// (receivers also poll as a fallback, so a notification lost during a reconnect only delays).
async fn spawn_pg_relay(
    pool: &PgPool,
    feed: ChangeFeed,
    shutdown: CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    let pool = pool.clone();
    listener
        .listen_all([ORDER_STATUS_CHANNEL, OUTBOX_CHANNEL])
        .await?;
    tokio::spawn(async move {
        loop {
            let notification = tokio::select! {
                () = shutdown.cancelled() => break,
                received = listener.recv() => received,
            };
            match notification {
                Ok(notification) => match notification.channel() {
                    OUTBOX_CHANNEL => feed.publish(Change::Outbox),
                    ORDER_STATUS_CHANNEL => {
                        for order_id in order_ids(notification.payload()) {
                            feed.publish(Change::OrderStatus(order_id));
                        }
                    }
                    other => debug!(channel = other, "ignoring notification"),
                },
                // The pool was closed: the process is shutting down.
                Err(_) if pool.is_closed() => break,
                Err(error) => {
                    warn!(%error, "postgres notification listener failed, retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    });
    Ok(())
}

/// The order ids of an [`ORDER_STATUS_CHANNEL`] payload (one, or several comma-separated);
/// anything that is not an order id is logged and skipped.
fn order_ids(payload: &str) -> impl Iterator<Item = Uuid> + '_ {
    payload.split(',').filter_map(|part| {
        Uuid::parse_str(part.trim())
            .inspect_err(|_| {
                debug!(
                    payload = part,
                    "ignoring malformed order id in notification"
                )
            })
            .ok()
    })
}

/// Microseconds since the Unix epoch: how SQLite stores instants, so that they compare and sort
/// as numbers.
pub fn to_unix_micros(at: chrono::DateTime<chrono::Utc>) -> i64 {
    at.timestamp_micros()
}

/// The inverse of [`to_unix_micros`]; out-of-range values clamp to the epoch.
pub fn from_unix_micros(micros: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    #[test]
    fn a_notification_names_one_order_or_several() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(super::order_ids(&a.to_string()).collect::<Vec<_>>(), [a]);
        assert_eq!(
            super::order_ids(&format!("{a},{b}")).collect::<Vec<_>>(),
            [a, b]
        );
        assert_eq!(
            super::order_ids(&format!("{a},not-an-id,,{b}")).collect::<Vec<_>>(),
            [a, b],
            "what is not an order id is skipped"
        );
        assert_eq!(super::order_ids("").count(), 0);
    }
}
