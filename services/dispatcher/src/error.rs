//! The dispatcher's errors, whether trying again may help, and their one mapping to gRPC.

use tonic::{Code, Status};
use tracing::error;
use waybill_service_kit::text::bound_message;

use crate::{kafka::TopicError, store::StoreError};

/// Everything an admin call or a relay step can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The request broke a rule; nothing was changed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The named thing exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the current state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A partner's topic could not be created; nothing was saved.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DispatchError {
    /// Whether the same call may succeed later (the relay retries these on its next cycle; a
    /// client may retry with backoff). Terminal errors need a different request.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Topic(_) => true,
            Self::Store(store) => store.is_retryable(),
            Self::InvalidArgument(_)
            | Self::NotFound(_)
            | Self::AlreadyExists(_)
            | Self::FailedPrecondition(_) => false,
        }
    }
}

impl From<DispatchError> for Status {
    fn from(error: DispatchError) -> Self {
        // Messages quote caller input only as bounded prefixes (`text::quote`); the whole
        // message is bounded as well, whatever a future variant puts in it.
        let status = status_of(error);
        Status::new(status.code(), bound_message(status.message()))
    }
}

fn status_of(error: DispatchError) -> Status {
    match error {
        DispatchError::InvalidArgument(message) => Status::new(Code::InvalidArgument, message),
        DispatchError::NotFound(message) => Status::new(Code::NotFound, message),
        DispatchError::AlreadyExists(message) => Status::new(Code::AlreadyExists, message),
        DispatchError::FailedPrecondition(message) => {
            Status::new(Code::FailedPrecondition, message)
        }
        DispatchError::Topic(cause) => {
            error!(error = %cause, "topic creation failed");
            Status::new(
                Code::Unavailable,
                format!(
                    "cannot create topic {} on the broker; nothing was saved, retry later",
                    cause.topic
                ),
            )
        }
        DispatchError::Store(StoreError::Unavailable(cause)) => {
            error!(error = %cause, "storage unavailable");
            Status::new(Code::Unavailable, "storage is unavailable, retry later")
        }
        DispatchError::Store(cause) => {
            // Never leak SQL or driver text to a client.
            error!(error = %cause, "internal error");
            Status::new(Code::Internal, "internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_stay_generic() {
        let status = Status::from(DispatchError::Store(StoreError::Corrupt(
            "secret sql text".into(),
        )));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }

    #[test]
    fn caller_errors_keep_their_message() {
        let status = Status::from(DispatchError::NotFound("partner acme not found".into()));
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "partner acme not found");
        assert!(!DispatchError::NotFound(String::new()).is_retryable());
    }
}
