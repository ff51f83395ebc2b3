//! Why a store operation failed.

use waybill_service_kit::db::{Failure, classify};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key already exists.
    #[error("already exists")]
    Duplicate,
    /// A referenced row (a partner) does not exist.
    #[error("referenced row missing")]
    MissingReference,
    /// A value broke a table's CHECK rule.
    #[error("value rejected by the schema")]
    CheckViolation,
    /// The database could not be reached in time; retrying later may succeed.
    /// (The driver's error is in the message, so it is not also a `source`: a chain prints it
    /// once.)
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// Anything else the database reported.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// A stored value could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Database(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match classify(&error) {
            Failure::Duplicate => Self::Duplicate,
            Failure::MissingReference => Self::MissingReference,
            Failure::CheckViolation => Self::CheckViolation,
            Failure::Unavailable | Failure::Conflict => Self::Unavailable(error),
            Failure::Other => Self::Database(error),
        }
    }
}
