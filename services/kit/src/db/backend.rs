//! The two backends: the pool each one holds ([`Backend`]), how a pool is sized
//! ([`PoolSettings`]), and one statement's text for each ([`Statement`]).
//! [`on_pool!`](crate::on_pool) runs the same query-building code against either pool.

use std::time::Duration;

use sqlx::{PgPool, SqlitePool};

use super::schema::SchemaPolicy;

/// The pool of one backend.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Production.
    Postgres(PgPool),
    /// Embedded.
    Sqlite(SqlitePool),
}

/// Pool sizing and connection settings.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Upper bound on open connections (Postgres). SQLite uses its own small pool.
    pub max_connections: u32,
    /// How long a caller waits for a free connection before failing.
    pub acquire_timeout: Duration,
    /// How long a pooled Postgres connection may take to answer the ping it gets when it goes
    /// back to the pool (and before one idle for a second is handed out) before it is replaced
    /// by a new connection; also the bound of each attempt to connect that replacement (see
    /// `pg_pool`: sqlx 0.8's own ping and close have no bound).
    pub answer_timeout: Duration,
    /// What connecting does with the schema: migrate (the default), require it current, or
    /// leave it.
    pub schema: SchemaPolicy,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(5),
            schema: SchemaPolicy::Migrate,
        }
    }
}

/// One statement's text per backend (placeholders `$1`, `$2`, … work on both).
#[derive(Debug, Clone, Copy)]
pub struct Statement {
    /// The Postgres text.
    pub postgres: &'static str,
    /// The SQLite text.
    pub sqlite: &'static str,
}

impl Statement {
    /// The text for `backend`.
    pub fn text(&self, backend: &Backend) -> &'static str {
        match backend {
            Backend::Postgres(_) => self.postgres,
            Backend::Sqlite(_) => self.sqlite,
        }
    }
}
