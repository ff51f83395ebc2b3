//! Why a store operation failed.

use std::sync::Arc;

use waybill_service_kit::db::{Failure, classify};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached in time; retrying later may succeed. (The driver's
    /// error is in the message, so it is not also a `source`: a chain prints it once.)
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// Anything else the database reported.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// A stored value could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The batch the report was in failed as a whole (the cause, shared by every report of
    /// the batch): retrying later may succeed.
    #[error("the report's batch was not committed: {0}")]
    Batch(Arc<StoreError>),
    /// The writer that records reports is gone (it only stops when the store is dropped, so
    /// this is a bug).
    #[error("the report writer has stopped")]
    WriterStopped,
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match classify(&error) {
            Failure::Unavailable | Failure::Conflict => Self::Unavailable(error),
            _ => Self::Database(error),
        }
    }
}
