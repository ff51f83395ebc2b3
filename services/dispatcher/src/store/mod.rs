//! Where the relay's state lives: the store's traits, split by their users ([`RelayStore`],
//! [`AdminStore`], both reading [`RoutingStore`]; [`DispatchStore`] is all three), and their one
//! implementation, [`SqlDispatchStore`], on Postgres or SQLite. Rows decode alike on both (`rows.rs`); what
//! differs is only the SQL text (`sql/*.pg.sql`, `sql/*.sqlite.sql`; `sql/*.sql` serve both)
//! and the steps that move whole batches (`postgres.rs`: arrays and row locks; `sqlite.rs`:
//! JSON arrays and the single writer). The conformance suite (`tests/store_conformance.rs`)
//! runs against both.
//!
//! The relay's writes are fenced, so an instance whose lease was lost cannot record an outcome
//! over the next holder's. How a lease holds its rows differs by backend ([`Lease`]):
//! - **Postgres**: the rows stay locked (`FOR UPDATE SKIP LOCKED`) by one transaction from the
//!   lease to the commit of its bookkeeping; nothing is written to lease them. The fence is that
//!   transaction: a crashed instance's rows are free the moment its connection drops, and a
//!   stalled one's when the server ends its transaction after `--lease` of idleness.
//! - **SQLite** (one writer, which a transaction held across a produce would block): the lease
//!   writes its owner, batch id and expiry into the rows, and every bookkeeping statement is
//!   conditional on them.
//!
//! Every bookkeeping step is one statement per kind of change for the whole batch, inside one
//! transaction.

mod admin;
mod error;
mod legacy;
mod model;
mod pg_events;
mod postgres;
mod rows;
mod sql;
mod sqlite;
mod statements;
mod traits;

use std::sync::Arc;

use waybill_service_kit::db::Database;

pub use self::postgres::lease_planning;
pub use self::{
    error::StoreError,
    model::{AuditBatch, Cleaned, EventBatch, Lease, LeaseRequest, RecordReport},
    sql::SqlDispatchStore,
    statements::RETRYABLE_STATES,
    traits::{AdminStore, DispatchStore, RelayStore, RoutingStore},
};
/// What the relay decided for a batch, recorded here (defined with the decisions).
pub use crate::domain::record::{AttemptLog, AuditCopy, BatchRecord, Fence, RowUpdate};

/// The store for `db`'s backend.
pub fn for_database(db: &Database) -> Arc<dyn DispatchStore> {
    Arc::new(SqlDispatchStore::new(db))
}
