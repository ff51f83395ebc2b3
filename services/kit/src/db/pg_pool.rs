//! The Postgres pool, with guards of our own where sqlx 0.8 has none:
//!
//! - **No ping without a bound.** sqlx pings a connection as it goes back to the pool, and
//!   closes one that fails; neither has a time limit, and closing a TLS connection waits to
//!   read from the server. A host that stops answering without closing anything (a blackholed
//!   path, a frozen VM, a failed-over address) would keep each connection, and with it its
//!   place in the pool, until the kernel gives up on the socket: many minutes, after which
//!   every call has waited `acquire_timeout` and failed. Here a connection that does not answer
//!   within [`PoolSettings::answer_timeout`] is replaced in its place by a new connection
//!   (the dead one's socket is simply dropped), so the pool keeps working as soon as the
//!   database can be reached again, by a new path if need be.
//! - **No ping on the caller's path** for a connection used within the last second (sqlx
//!   pings on every acquire by default: a round trip per statement).
//! - **A `BEGIN` that finishes.** [`begin`] runs `BEGIN` in a task of its own (upstream sqlx
//!   issue 4393).

use std::time::Duration;

use sqlx::{
    Connection, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::backend::PoolSettings;

/// A pooled connection idle for longer than this is pinged before it is handed out: it may
/// have been closed by a database restart or an idle timeout since. One released less than
/// this before the server went away fails its next statement once, as `UNAVAILABLE` (retried
/// by the relay; the storefront retries `PlaceOrder` with its idempotency key).
pub(super) const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Opens the pool with the guards above; `shutdown` ends attempts to replace a connection.
pub(super) async fn connect(
    options: PgConnectOptions,
    settings: &PoolSettings,
    shutdown: CancellationToken,
) -> Result<PgPool, sqlx::Error> {
    let limit = settings.answer_timeout;
    let (on_acquire, on_release) = (options.clone(), options.clone());
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            let options = on_acquire.clone();
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    // One attempt: the caller's acquire_timeout bounds the rest.
                    answers_or_replaced(conn, &options, limit, None).await?;
                }
                Ok(true)
            })
        })
        // Runs before sqlx's own release ping, which then finds a connection that answers.
        .after_release(move |conn, _| {
            let (options, shutdown) = (on_release.clone(), shutdown.clone());
            Box::pin(async move {
                answers_or_replaced(conn, &options, limit, Some(&shutdown)).await?;
                Ok(true)
            })
        })
        .connect_with(options)
        .await
}

/// Pings `conn`; one that does not answer within `limit` is swapped for a new connection and
/// dropped. With `until` the new connection is tried again (every `limit`) until it can be
/// made or `until` is cancelled; without, once.
async fn answers_or_replaced(
    conn: &mut PgConnection,
    options: &PgConnectOptions,
    limit: Duration,
    until: Option<&CancellationToken>,
) -> Result<(), sqlx::Error> {
    match tokio::time::timeout(limit, conn.ping()).await {
        Ok(answered) => return answered,
        Err(_) => warn!(
            limit_ms = limit.as_millis() as u64,
            "a pooled postgres connection did not answer; replacing it"
        ),
    }
    loop {
        let error = match tokio::time::timeout(limit, PgConnection::connect_with(options)).await {
            Ok(Ok(fresh)) => {
                // Dropping the dead connection closes its socket without waiting for anything.
                drop(std::mem::replace(conn, fresh));
                info!("the pooled postgres connection was replaced");
                return Ok(());
            }
            Ok(Err(error)) => error,
            Err(_) => sqlx::Error::PoolTimedOut,
        };
        let Some(until) = until else {
            return Err(error);
        };
        warn!(%error, "cannot replace a pooled postgres connection yet; trying again");
        tokio::select! {
            () = until.cancelled() => return Err(error),
            () = tokio::time::sleep(limit) => {}
        }
    }
}

/// Begins a transaction on `pool`, to completion even if the caller is cancelled meanwhile
/// (a gRPC call whose client went away, a timeout): use it instead of `Pool::begin`.
///
/// sqlx 0.8's Postgres `begin` counts the transaction only once `BEGIN` has been answered, so
/// a caller cancelled while it waits leaves the session inside a transaction nobody rolls back,
/// and the pool hands that session to the next caller (upstream sqlx issue 4393). Here the
/// `BEGIN` runs in a task of its own: a caller that gives up drops a transaction that was
/// counted, which rolls back as the connection returns to the pool.
pub async fn begin<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    #[allow(clippy::disallowed_methods)] // the one place that may
    run_to_completion(pool, |pool| async move { pool.begin().await }).await
}

/// [`begin`] with a `BEGIN` statement of the caller's (Postgres: any statements sent as one
/// simple query, e.g. `BEGIN; SET LOCAL …`): what a transaction sets for itself costs no round
/// trip of its own.
pub async fn begin_with<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    statement: String,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    #[allow(clippy::disallowed_methods)] // the one place that may
    run_to_completion(pool, |pool| async move { pool.begin_with(statement).await }).await
}

/// Runs `begin` on a clone of `pool` in a task of its own, so that it completes even if the
/// caller is cancelled (see [`begin`]).
async fn run_to_completion<DB, F, Fut>(
    pool: &sqlx::Pool<DB>,
    begin: F,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error>
where
    DB: sqlx::Database,
    F: FnOnce(sqlx::Pool<DB>) -> Fut,
    Fut: std::future::Future<Output = Result<sqlx::Transaction<'static, DB>, sqlx::Error>>
        + Send
        + 'static,
{
    tokio::spawn(begin(pool.clone()))
        .await
        .map_err(|joined| sqlx::Error::Io(std::io::Error::other(joined.to_string())))?
}
