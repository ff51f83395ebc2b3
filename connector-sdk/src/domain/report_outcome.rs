//! What to do with StatusIngest's answer to a report.
//!
//! A report is retried when the failure may pass by itself (the service is down or
//! overloaded, the network broke, the partner's key is not enrolled yet or the clocks disagree
//! for a while) and given up when resending the same report can never succeed (the request is
//! invalid, the order was not routed to this partner). Giving up is never silent: the report
//! stays in the inbox as `refused`, with StatusIngest's message, counted and logged.

use tonic::Code;

/// The decision for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// StatusIngest took it (or had it already: `duplicate = true` is success too).
    Confirmed,
    /// Retry later with backoff, with a fresh token.
    Retry,
    /// Resending cannot succeed; keep it as refused.
    Refused,
}

/// Classifies a gRPC status code returned by `ReportStatus`.
pub fn classify(code: Code) -> ReportOutcome {
    match code {
        Code::Ok => ReportOutcome::Confirmed,
        // The order is not routed to this partner, or the request breaks a rule: the same
        // report will be refused the same way forever.
        Code::PermissionDenied
        | Code::InvalidArgument
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented => ReportOutcome::Refused,
        // A token refusal is retried: the key may be enrolled in a moment, a clock may be
        // skewed for a while, and each attempt carries a fresh token anyway. The retry budget
        // bounds it.
        Code::Unauthenticated
        | Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Internal
        | Code::Unknown
        | Code::Cancelled
        | Code::DataLoss
        | Code::AlreadyExists => ReportOutcome::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_retried_and_refusals_are_kept() {
        assert_eq!(classify(Code::Ok), ReportOutcome::Confirmed);
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Unauthenticated,
            Code::Internal,
        ] {
            assert_eq!(classify(code), ReportOutcome::Retry, "{code:?}");
        }
        for code in [
            Code::PermissionDenied,
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
        ] {
            assert_eq!(classify(code), ReportOutcome::Refused, "{code:?}");
        }
    }
}
