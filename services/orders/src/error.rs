//! The Orders service's errors and their one mapping to gRPC status codes.

use tonic::{Code, Status};
use tracing::error;
use waybill_service_kit::text::{bound_message, quote};

use crate::{domain::InvalidField, store::StoreError};

/// Everything an Orders call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum OrdersError {
    /// The request broke a rule; nothing was changed.
    #[error(transparent)]
    InvalidArgument(#[from] InvalidField),
    /// No such order.
    #[error("order {0} not found")]
    NotFound(String),
    /// A catalog call named a SKU the catalog does not have; nothing was changed.
    #[error("sku {} is not in the catalog; nothing was changed", quote(.0))]
    UnknownSku(String),
    /// The idempotency key belongs to a different request.
    #[error("{0}")]
    AlreadyExists(String),
    /// Storage is unreachable for now; the call may be retried (with the same idempotency key).
    #[error("storage unavailable")]
    Unavailable(#[source] StoreError),
    /// A bug or broken storage; details go to the log, not to the caller.
    #[error("internal error")]
    Internal(#[source] StoreError),
}

impl From<StoreError> for OrdersError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::IdempotencyConflict { ref key, order_id } => Self::AlreadyExists(format!(
                "idempotency key {} was already used for a different request (order {order_id}); use a new idempotency key for a new order",
                quote(key)
            )),
            StoreError::Unavailable(_) => Self::Unavailable(error),
            StoreError::Database(_) | StoreError::Corrupt(_) => Self::Internal(error),
        }
    }
}

impl From<OrdersError> for Status {
    fn from(error: OrdersError) -> Self {
        // Messages quote caller input only as bounded prefixes; this bounds the whole message
        // as well, whatever a future variant puts in it.
        let status = status_of(error);
        Status::new(status.code(), bound_message(status.message()))
    }
}

fn status_of(error: OrdersError) -> Status {
    match &error {
        OrdersError::InvalidArgument(field) => {
            Status::new(Code::InvalidArgument, field.to_string())
        }
        OrdersError::NotFound(_) | OrdersError::UnknownSku(_) => {
            Status::new(Code::NotFound, error.to_string())
        }
        OrdersError::AlreadyExists(message) => Status::new(Code::AlreadyExists, message.clone()),
        OrdersError::Unavailable(cause) => {
            error!(error = %cause, "storage unavailable");
            Status::new(Code::Unavailable, "storage is unavailable, retry later")
        }
        OrdersError::Internal(cause) => {
            // Never leak SQL or driver text to a client.
            error!(error = %cause, "internal error");
            Status::new(Code::Internal, "internal error")
        }
    }
}
