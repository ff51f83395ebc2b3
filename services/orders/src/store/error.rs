//! Why a store operation failed.

use uuid::Uuid;
use waybill_service_kit::db::{Failure, classify};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The idempotency key belongs to an order placed with a different request.
    #[error("idempotency key {key:?} was already used for a different request (order {order_id})")]
    IdempotencyConflict {
        /// The reused key.
        key: String,
        /// The order that owns it.
        order_id: Uuid,
    },
    /// The database could not be reached in time; retrying later may succeed.
    /// (The driver's error is in the message, so it is not also a `source`: a chain prints it
    /// once.)
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// Anything else the database reported; a bug or a broken schema, not the caller's fault.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// A stored value could not be read back (corrupt or from a newer schema).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match classify(&error) {
            Failure::Unavailable | Failure::Conflict => Self::Unavailable(error),
            _ => Self::Database(error),
        }
    }
}
