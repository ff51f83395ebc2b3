//! Plans by key, whatever the statistics say, for the statements that write a batch.
//!
//! The hot batch statements (the relay's lease and record, StatusIngest's report batch) take
//! their batch as arrays and find every row they touch by a key. A prepared statement's generic
//! plan is made once per connection, from the statistics of that moment; made while a table was
//! small (a fresh database, or a table grown since autovacuum's last `ANALYZE`), it hashes or
//! scans the whole table for every batch, and goes on doing so as the table grows until the next
//! `ANALYZE`. Measured ten seconds into a run at 500 orders/s: the report batch read all 3,000
//! rows of `orders` twice and of `report_token_ids` once for a batch of one, and the relay's
//! record read all of `dispatch` to update four rows.
//!
//! With sequential scans, hash and merge joins and materialised rescans priced out, the plan by
//! key is the only one left, so the generic plan is the right one from the first call, and it is
//! used from the first call: no call pays for planning (custom plans of the report batch were a
//! fifth of Postgres's time). A statement that has no other way (no index for its condition)
//! still runs: these settings price the other ways out, they do not forbid them.

use std::sync::LazyLock;

use sqlx::{ConnectOptions as _, Connection as _, PgConnection, PgPool};
use tokio::time::Instant;

use super::pg_pool::PING_IF_IDLE_FOR;

/// The planner settings, as `(name, value)`.
pub const KEYED_PLANS: [(&str, &str); 5] = [
    ("enable_seqscan", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
    ("enable_material", "off"),
    ("plan_cache_mode", "force_generic_plan"),
];

/// [`KEYED_PLANS`] as `SET LOCAL` statements, for the rest of a transaction: to be sent with its
/// `BEGIN` as one simple query (see [`super::begin_with`]), so they cost no round trip. Built
/// once: the relay's lease sends it every cycle.
pub fn keyed_plans_locally() -> &'static str {
    static LOCALLY: LazyLock<String> = LazyLock::new(|| {
        KEYED_PLANS
            .iter()
            .map(|(name, value)| format!("SET LOCAL {name} = {value}"))
            .collect::<Vec<_>>()
            .join("; ")
    });
    &LOCALLY
}

/// A connection of its own to `pool`'s database (not counted by the pool), with
/// [`KEYED_PLANS`] for its whole session: for a single writer that runs only batch statements
/// (see [`HeldConnection`]).
pub async fn keyed_connection(pool: &PgPool) -> Result<PgConnection, sqlx::Error> {
    let options = (*pool.connect_options()).clone().options(KEYED_PLANS);
    options.connect().await
}

/// A single writer's own connection ([`keyed_connection`]), held from one statement to the
/// next: no pool round trips per statement (a pooled connection is pinged twice each time it
/// goes back). Opened for the first statement; kept while statements succeed; dropped after
/// one that failed or was given up (the next opens another); pinged before a statement when it
/// sat idle as long as the pool would ping its own (a database restart or an idle timeout may
/// have closed it since). The caller bounds each use in time (`super::within`): a connection
/// whose host went silent is dropped with the use given up.
#[derive(Debug, Default)]
pub struct HeldConnection {
    held: Option<(PgConnection, Instant)>,
}

impl HeldConnection {
    /// Runs `work` on the held connection (or a new one), and keeps the connection only if
    /// `work` succeeded.
    pub async fn run<T, E>(
        &mut self,
        pool: &PgPool,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<sqlx::Error>,
    {
        let mut conn = match self.held.take() {
            Some((mut conn, used)) if used.elapsed() >= PING_IF_IDLE_FOR => {
                match conn.ping().await {
                    Ok(()) => conn,
                    Err(error) => {
                        tracing::debug!(%error, "a held connection went away while idle; opening another");
                        keyed_connection(pool).await?
                    }
                }
            }
            Some((conn, _)) => conn,
            None => keyed_connection(pool).await?,
        };
        let done = work(&mut conn).await;
        if done.is_ok() {
            self.held = Some((conn, Instant::now()));
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use sqlx::postgres::PgPoolOptions;

    use super::*;

    async fn pool() -> Option<PgPool> {
        let url = std::env::var("WAYBILL_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        match PgPoolOptions::new().max_connections(2).connect(&url).await {
            Ok(pool) => Some(pool),
            Err(error) if std::env::var("WAYBILL_REQUIRE_ALL").as_deref() != Ok("1") => {
                eprintln!("SKIPPED: no Postgres at {url}: {error}");
                None
            }
            Err(error) => panic!("no Postgres at {url}: {error}"),
        }
    }

    async fn backend_and_seqscan(
        held: &mut HeldConnection,
        pool: &PgPool,
    ) -> Result<(i32, String), sqlx::Error> {
        held.run(pool, async |conn| {
            sqlx::query_as("SELECT pg_backend_pid(), current_setting('enable_seqscan')")
                .fetch_one(conn)
                .await
        })
        .await
    }

    // Kept from one use to the next, with the keyed settings; dropped after a failure, and the
    // next use opens another.
    #[tokio::test]
    async fn a_held_connection_is_kept_until_a_use_fails() {
        let Some(pool) = pool().await else { return };
        let mut held = HeldConnection::default();
        let (first, seqscan) = backend_and_seqscan(&mut held, &pool)
            .await
            .expect("first use");
        assert_eq!(seqscan, "off", "the session plans by key");
        let (again, _) = backend_and_seqscan(&mut held, &pool)
            .await
            .expect("second use");
        assert_eq!(again, first, "the same session, not one from the pool");

        // Waits until that backend has exited (up to 5 s), so the next use finds it gone.
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
            .bind(first)
            .fetch_one(&pool)
            .await
            .expect("terminate");
        assert!(ended);
        // Used within a second of the last use, it is not pinged first: this use fails...
        backend_and_seqscan(&mut held, &pool)
            .await
            .expect_err("the session was ended");
        // ...and the next opens another.
        let (replaced, seqscan) = backend_and_seqscan(&mut held, &pool)
            .await
            .expect("new one");
        assert_ne!(replaced, first);
        assert_eq!(seqscan, "off");
    }
}
