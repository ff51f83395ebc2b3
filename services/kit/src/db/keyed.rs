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

use sqlx::{ConnectOptions as _, PgConnection, PgPool};

/// The planner settings, as `(name, value)`.
pub const KEYED_PLANS: [(&str, &str); 5] = [
    ("enable_seqscan", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
    ("enable_material", "off"),
    ("plan_cache_mode", "force_generic_plan"),
];

/// [`KEYED_PLANS`] as `SET LOCAL` statements, for the rest of a transaction: to be sent with its
/// `BEGIN` as one simple query (see [`super::begin_with`]), so they cost no round trip.
pub fn keyed_plans_locally() -> String {
    KEYED_PLANS
        .iter()
        .map(|(name, value)| format!("SET LOCAL {name} = {value}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A connection of its own to `pool`'s database (not counted by the pool), with
/// [`KEYED_PLANS`] for its whole session: for a single writer that runs only batch statements,
/// and that skips the pool's round trips too (a pooled connection is pinged twice each time it
/// goes back). The caller bounds its statements in time and drops the connection after any
/// failure.
pub async fn keyed_connection(pool: &PgPool) -> Result<PgConnection, sqlx::Error> {
    let options = (*pool.connect_options()).clone().options(KEYED_PLANS);
    options.connect().await
}
