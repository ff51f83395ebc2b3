//! Where reports land: the [`IngestStore`] trait and its one implementation,
//! [`SqlIngestStore`], on Postgres or SQLite; only the statements differ per backend
//! (`postgres.rs`, `sqlite.rs`, `sql/`). The conformance suite (`tests/store_conformance.rs`)
//! runs against both.
//!
//! Reports are written by a group commit (`writer.rs`): [`IngestStore::record_report`] queues
//! the report (a bounded queue: a full one holds the caller back) and waits; one writer takes
//! whatever is queued when it is free — no timer — and records it all in one transaction
//! ([`SqlIngestStore::record_batch`]), commits once, and answers every caller of the batch only
//! after that `COMMIT` returned. A commit that fails answers every caller of the batch
//! `Unavailable` (retryable: a retry with a fresh token is answered `duplicate` if the commit did
//! land after all).
//!
//! Each report of a batch is decided as it would be alone: its order's dispatch row and then the
//! order row locked, the token id taken into the replay guard, an earlier report with the same
//! id looked for, [`crate::domain::decision::decide`] rules, and the decision is carried out —
//! history event, order status and tracking id, dispatch row acknowledged or put back for
//! routing — or undone. On SQLite each report has a `SAVEPOINT` of its own, so one that fails
//! is rolled back alone. On Postgres the batch's head — the reports that share no order, token
//! id or report id (rejections aside) — is recorded in one statement (`postgres/together.rs`;
//! when it is the whole batch, that statement is the transaction), the rest one at a time under
//! a savepoint each (`postgres/one_by_one.rs`); if the head's
//! statement fails, the transaction is rolled back and the whole batch is recorded one at a
//! time, under a savepoint each, so that only the report to blame fails. The Postgres batch never
//! waits for a row lock: a report whose rows another transaction holds (a relay batch recording
//! the order) is left out and its caller records it in a transaction of its own, which waits for
//! the lock as long as it takes, so one busy order cannot hold up the others. Watchers
//! (`WatchOrder`) and the relay are woken at commit: Postgres by one `NOTIFY` per batch naming
//! every order it changed, SQLite through the in-process change feed.
//!
//! `recorded_at` (the history event's time, and the dispatch row's `updated_at`) is read from
//! the store's clock as the report is written, with its rows locked (or, for the head of a
//! Postgres batch, by the statement that locks and writes them): the time the event became true
//! on the writer's side, which the commit makes visible a few milliseconds later at most — not
//! the time the request arrived, before it was verified and queued. One order's events are
//! written under its dispatch row's lock, so in one process their times follow their sequence.

mod batches;
mod error;
mod model;
mod postgres;
mod sql;
mod sqlite;
mod statements;
mod traits;
mod writer;

use std::sync::Arc;

use waybill_service_kit::{
    clock::{SharedClock, SystemClock},
    db::Database,
};

pub use self::{
    batches::MAX_BATCH,
    error::StoreError,
    model::{AuthenticatedReport, EnrolledKey, InBatch, ReportOutcome},
    sql::SqlIngestStore,
    traits::IngestStore,
    writer::WRITE_LIMIT,
};

/// The store for `db`'s backend, recording times from the system clock.
pub fn for_database(db: &Database) -> Arc<dyn IngestStore> {
    for_database_with_clock(db, Arc::new(SystemClock))
}

/// The store for `db`'s backend, recording times from `clock`.
pub fn for_database_with_clock(db: &Database, clock: SharedClock) -> Arc<dyn IngestStore> {
    Arc::new(SqlIngestStore::new(db, clock))
}
