//! Where orders live: the [`OrderStore`] trait and its one implementation, [`SqlOrderStore`],
//! on Postgres or SQLite. Rows decode alike on both (`rows.rs`); what differs is only the SQL
//! text (`sql/*.pg.sql`, `sql/*.sqlite.sql`; `sql/*.sql` serve both) and the placing write
//! (`postgres.rs`, `sqlite.rs`). The same conformance suite (`tests/store_conformance.rs`) runs
//! against both.
//!
//! The placing transaction is the heart of the transactional outbox: the order, its lines, its
//! `PLACED` event and its `PENDING` dispatch row are written together or not at all.

mod catalog_admin;
mod error;
mod postgres;
mod rows;
mod sql;
mod sqlite;
mod statements;
mod traits;

use std::sync::Arc;

use waybill_service_kit::{db::Database, on_pool};

pub use self::postgres::WRITE_LIMIT;
pub use self::{
    catalog_admin::{CatalogStore, ItemChange, RetireError},
    error::StoreError,
    sql::SqlOrderStore,
    traits::{OrderStore, Placement},
};

/// The catalog seed used by `waybill dev`/`demo`, benchmarks and tests.
pub const CATALOG_SEED_SQL: &str = include_str!("../../seed/catalog.sql");

/// The store for `db`'s backend.
pub fn for_database(db: &Database) -> Arc<dyn OrderStore> {
    Arc::new(SqlOrderStore::new(db))
}

/// Loads the sample catalog (idempotent).
pub async fn seed_catalog(db: &Database) -> Result<(), StoreError> {
    on_pool!(db.backend(), |pool| {
        sqlx::raw_sql(CATALOG_SEED_SQL)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(())
}
