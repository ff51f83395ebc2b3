//! StatusIngest's errors and their one mapping to gRPC status codes.
//!
//! Anything about the token or the key is `UNAUTHENTICATED`; an order that is not routed to the
//! reporting partner is `PERMISSION_DENIED` with one fixed message whether the order exists or
//! not; a malformed field is `INVALID_ARGUMENT` naming it. Messages are bounded and never
//! contain the token.

use tonic::{Code, Status};
use tracing::error;
use waybill_service_kit::text::{InvalidField, bound_message};
use waybill_token::TokenError;

use crate::store::StoreError;

/// The one answer for an order this partner may not report on.
pub const NOT_ROUTED_MESSAGE: &str = "this order is not routed to your partner id";
/// The answer for a report that overtook the relay's bookkeeping of its order's send.
pub const IN_FLIGHT_MESSAGE: &str =
    "this order is being handed to a partner right now; retry in a moment with a fresh token";
/// The retry hint sent with [`IN_FLIGHT_MESSAGE`] (`waybill-retry-after-ms`): the relay records
/// a batch within milliseconds of its last acknowledgement.
pub const IN_FLIGHT_RETRY_AFTER_MS: u32 = 10;

/// Everything a `ReportStatus` call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A field broke a rule; nothing was changed.
    #[error(transparent)]
    InvalidArgument(#[from] InvalidField),
    /// The token or its key was refused (the cause is in the message callers see, so it is not
    /// also a `source`).
    #[error("report token refused: {0}")]
    Unauthenticated(TokenError),
    /// The order does not exist or is not routed to this partner.
    #[error("{NOT_ROUTED_MESSAGE}")]
    NotRouted,
    /// Not routed to this partner yet: the report overtook the relay's bookkeeping of the
    /// send (SQLite; Postgres waits on the row's lock instead). Retry in a moment.
    #[error("{IN_FLIGHT_MESSAGE}")]
    InFlight,
    /// Storage is unreachable for now; the report may be retried (with a fresh token).
    #[error("storage unavailable")]
    Unavailable(#[source] StoreError),
    /// A bug or broken storage; details go to the log, not to the caller.
    #[error("internal error")]
    Internal(#[source] StoreError),
}

impl IngestError {
    /// The name rejections are counted and logged under.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "invalid_argument",
            Self::Unauthenticated(token) => token.reason.as_str(),
            Self::NotRouted => "not_routed",
            Self::InFlight => "dispatch_in_flight",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<TokenError> for IngestError {
    fn from(error: TokenError) -> Self {
        Self::Unauthenticated(error)
    }
}

impl From<StoreError> for IngestError {
    fn from(error: StoreError) -> Self {
        match error {
            // A batch that failed as a whole is retryable for each of its reports, whatever
            // the cause: none of them is to blame for it.
            StoreError::Unavailable(_) | StoreError::Batch(_) => Self::Unavailable(error),
            StoreError::Database(_) | StoreError::Corrupt(_) | StoreError::WriterStopped => {
                Self::Internal(error)
            }
        }
    }
}

impl From<IngestError> for Status {
    fn from(error: IngestError) -> Self {
        match &error {
            IngestError::InvalidArgument(field) => {
                Status::new(Code::InvalidArgument, bound_message(field.to_string()))
            }
            IngestError::Unauthenticated(_) => {
                Status::new(Code::Unauthenticated, bound_message(error.to_string()))
            }
            IngestError::NotRouted => Status::new(Code::PermissionDenied, NOT_ROUTED_MESSAGE),
            IngestError::InFlight => {
                let mut status = Status::new(Code::Unavailable, IN_FLIGHT_MESSAGE);
                status.metadata_mut().insert(
                    waybill_proto::headers::RETRY_AFTER_MS,
                    tonic::metadata::MetadataValue::from(IN_FLIGHT_RETRY_AFTER_MS),
                );
                status
            }
            IngestError::Unavailable(cause) => {
                error!(error = %cause, "storage unavailable");
                Status::new(
                    Code::Unavailable,
                    "storage is unavailable, retry later with a fresh token",
                )
            }
            IngestError::Internal(cause) => {
                // Never leak SQL or driver text to a client.
                error!(error = %cause, "internal error");
                Status::new(Code::Internal, "internal error")
            }
        }
    }
}
