//! The dispatcher's errors, whether trying again may help, and their one mapping to gRPC.
//!
//! Every refusal is typed: a broken request rule is an [`InvalidField`] (field and rule, as in
//! Orders and StatusIngest), a missing thing is a [`NotFound`] naming it, a state that does not
//! allow the request is a [`Conflict`]. Messages name ids only after they passed their checks
//! (partner, key and route ids are restricted to `[A-Za-z0-9._-]`, order ids are UUIDs) and
//! quote other caller input through `text::quote`.

use tonic::{Code, Status};
use tracing::error;
use uuid::Uuid;
use waybill_proto::v1::DispatchState;
use waybill_service_kit::text::{InvalidField, bound_message};

use crate::{
    domain::request::state_names,
    kafka::TopicError,
    store::{RETRYABLE_STATES, StoreError},
};

/// Everything an admin call or a relay step can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The request broke a rule; nothing was changed.
    #[error(transparent)]
    InvalidArgument(#[from] InvalidField),
    /// The named thing does not exist.
    #[error(transparent)]
    NotFound(#[from] NotFound),
    /// The partner already has a key under this id.
    #[error("partner {partner_id} already has a key {key_id}; use a new key id to rotate")]
    KeyExists {
        /// The partner.
        partner_id: String,
        /// The key id taken.
        key_id: String,
    },
    /// The request is valid but the current state does not allow it.
    #[error(transparent)]
    FailedPrecondition(#[from] Conflict),
    /// A partner's topic could not be created; nothing was saved.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an admin call named that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotFound {
    /// No partner with this id.
    #[error("partner {0} not found; enroll it first with EnrollPartner")]
    Partner(String),
    /// The partner has no key with this id.
    #[error("partner {partner_id} has no key {key_id}")]
    Key {
        /// The partner.
        partner_id: String,
        /// The key id.
        key_id: String,
    },
    /// No route with this id.
    #[error("route {0} not found")]
    Route(String),
    /// No order with this id.
    #[error("order {0} not found")]
    Order(Uuid),
    /// The order has no dispatch row (not placed through the outbox, or not yet).
    #[error("order {0} has no dispatch row")]
    Dispatch(Uuid),
}

/// Why a valid request cannot be carried out in the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// The order's state is not one an operator may send back to `PENDING`.
    #[error(
        "order {order_id} is {}; only {} can be retried",
        .state.short_name(),
        state_names(&RETRYABLE_STATES)
    )]
    NotRetryable {
        /// The order.
        order_id: Uuid,
        /// Its dispatch state.
        state: DispatchState,
    },
    /// A relay instance holds the order's lease right now.
    #[error("order {order_id} is being worked on by {owner} right now; try again shortly")]
    Leased {
        /// The order.
        order_id: Uuid,
        /// The lease owner (a relay instance id).
        owner: String,
    },
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
            | Self::KeyExists { .. }
            | Self::FailedPrecondition(_) => false,
        }
    }
}

/// A driver error outside any store call: a step given up after its time limit (the kit's
/// `within`), which is the database's unavailability.
impl From<sqlx::Error> for DispatchError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(StoreError::from(error))
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
    let code = match &error {
        DispatchError::InvalidArgument(_) => Code::InvalidArgument,
        DispatchError::NotFound(_) => Code::NotFound,
        DispatchError::KeyExists { .. } => Code::AlreadyExists,
        DispatchError::FailedPrecondition(_) => Code::FailedPrecondition,
        DispatchError::Topic(cause) => {
            error!(error = %cause, "topic creation failed");
            // The broker's answer goes to the log; the caller learns which topic.
            return Status::new(
                Code::Unavailable,
                format!(
                    "cannot create topic {} on the broker; nothing was saved, retry later",
                    cause.topic
                ),
            );
        }
        DispatchError::Store(StoreError::Unavailable(cause)) => {
            error!(error = %cause, "storage unavailable");
            return Status::new(Code::Unavailable, "storage is unavailable, retry later");
        }
        DispatchError::Store(cause) => {
            // Never leak SQL or driver text to a client.
            error!(error = %cause, "internal error");
            return Status::new(Code::Internal, "internal error");
        }
    };
    Status::new(code, error.to_string())
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
        let status = Status::from(DispatchError::from(NotFound::Partner("acme".into())));
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(
            status.message(),
            "partner acme not found; enroll it first with EnrollPartner"
        );
        assert!(!DispatchError::from(NotFound::Route(String::new())).is_retryable());
    }

    #[test]
    fn each_kind_keeps_its_code() {
        let order_id = Uuid::nil();
        for (error, code) in [
            (
                DispatchError::from(InvalidField::new("route.region", "too long")),
                Code::InvalidArgument,
            ),
            (
                DispatchError::KeyExists {
                    partner_id: "acme".into(),
                    key_id: "k1".into(),
                },
                Code::AlreadyExists,
            ),
            (
                Conflict::NotRetryable {
                    order_id,
                    state: DispatchState::Sent,
                }
                .into(),
                Code::FailedPrecondition,
            ),
        ] {
            assert_eq!(Status::from(error).code(), code);
        }
        assert_eq!(
            Conflict::NotRetryable {
                order_id,
                state: DispatchState::Sent,
            }
            .to_string(),
            format!(
                "order {order_id} is SENT; only RETRYING, DEAD, UNROUTABLE, UNACKNOWLEDGED can be \
                 retried"
            )
        );
    }
}
