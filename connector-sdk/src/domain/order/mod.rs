//! The worker's decisions for one record, without I/O, so that every transition is
//! unit-tested here (`tests.rs`, one test per row, on a fixed clock). The worker gathers the
//! inputs — what the inbox says, what the adapter answered — and carries the decision out.
//!
//! | record | what is known | decision |
//! | --- | --- | --- |
//! | not an order | set aside before (a redelivery) | [`OnUndecodable::Done`]: nothing to do, its offset is safe |
//! | not an order | new | [`OnUndecodable::SetAside`]: dead-letter topic and inbox row |
//! | an order | the inbox holds its answer (accepted, rejected, set aside) | [`OnDelivery::AnswerFromInbox`]: the adapter is not called; its pending report goes out through the scan |
//! | an order | started before, no answer stored (a crash, a timeout) | [`OnDelivery::CallAgain`]: the adapter again, same idempotency key |
//! | an order | first delivery | [`OnDelivery::FirstCall`] |
//! | an adapter call | accepted or rejected | [`AfterCall::Store`]: the answer, its report and the reports it schedules for later, in one inbox transaction |
//! | an adapter call | accepted with a later report StatusIngest would refuse | [`AfterCall::SetAside`], as a permanent error |
//! | an adapter call | a permanent error | [`AfterCall::SetAside`] |
//! | an adapter call | a panic | [`AfterCall::SetAside`] |
//! | an adapter call | a retryable error or a timeout, attempts left | [`AfterCall::Retry`] after a backoff with jitter |
//! | an adapter call | a retryable error or a timeout, attempts spent | [`AfterCall::SetAside`] |
//! | an answer stored | the inbox kept ours (or another instance's identical one) | [`AfterStore::Submit`]: its report onto the pipeline now (the scan, woken, times the later ones) |
//! | an answer stored | the inbox kept another instance's different answer | [`AfterStore::WakeScan`]: that answer's report goes out through the scan |
//!
//! Besides: [`answer`] makes the stored answer, its report (a deterministic report id, so
//! two instances answering the same order send one event) and the later reports it schedules
//! (each due after its delay, deterministic ids too), [`placed_to_answered`] the latency figure.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use waybill_proto::v1::OrderStatus;

use crate::{
    domain::backoff::Backoff,
    inbox::{InboxOrder, OrderState, StoredAnswer, StoredReport},
    partner::{Acceptance, LaterReport, PartnerError},
};

/// What to do with a record that is not an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUndecodable {
    /// It was set aside before: nothing left to do.
    Done,
    /// Set it aside now.
    SetAside,
}

/// Decides for a record that is not an order, given whether the inbox has it set aside.
pub fn on_undecodable(set_aside_before: bool) -> OnUndecodable {
    if set_aside_before {
        OnUndecodable::Done
    } else {
        OnUndecodable::SetAside
    }
}

/// What to do with a delivered order, once the inbox recorded the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelivery {
    /// The inbox holds its answer: do not call the adapter.
    AnswerFromInbox,
    /// Seen before without a stored answer: call the adapter again with the same key.
    CallAgain,
    /// The first delivery: call the adapter.
    FirstCall,
}

/// Decides for a delivered order from its inbox row after [`Inbox::begin`](crate::inbox::Inbox::begin).
pub fn on_delivery(row: &InboxOrder) -> OnDelivery {
    match row.state {
        OrderState::Accepted | OrderState::Rejected | OrderState::SetAside => {
            OnDelivery::AnswerFromInbox
        }
        OrderState::Started if row.deliveries > 1 => OnDelivery::CallAgain,
        OrderState::Started => OnDelivery::FirstCall,
    }
}

/// How one adapter call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// It answered.
    Answered(Acceptance),
    /// It returned an error.
    Failed(PartnerError),
    /// It took longer than the adapter timeout.
    TimedOut(Duration),
    /// It panicked.
    Panicked,
}

/// Adapter calls per delivery and the backoff between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdapterRetry {
    /// Calls before the order is set aside.
    pub attempts: u32,
    /// The wait before each retry.
    pub backoff: Backoff,
}

/// What to do after an adapter call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterCall {
    /// Store this answer (and the report that says it).
    Store(Acceptance),
    /// Set the order aside for this reason.
    SetAside(String),
    /// Call again after `delay`.
    Retry {
        /// The wait.
        delay: Duration,
        /// Why the call failed.
        failure: String,
    },
}

/// Decides after call number `attempt` (1 for the first) ended with `result`; `rng` draws the
/// backoff's jitter.
pub fn after_call(
    result: CallResult,
    attempt: u32,
    retry: &AdapterRetry,
    rng: &mut impl Rng,
) -> AfterCall {
    let failure = match result {
        CallResult::Answered(acceptance) => {
            return match acceptance
                .later()
                .iter()
                .find_map(|l| l.update.check().err())
            {
                None => AfterCall::Store(acceptance),
                Some(error) => AfterCall::SetAside(format!(
                    "adapter failed permanently: it answered with a later report StatusIngest \
                     would refuse: {error}"
                )),
            };
        }
        CallResult::Panicked => return AfterCall::SetAside("adapter panicked".to_owned()),
        CallResult::Failed(PartnerError::Permanent(reason)) => {
            return AfterCall::SetAside(format!("adapter failed permanently: {reason}"));
        }
        CallResult::Failed(PartnerError::Retryable(reason)) => reason,
        CallResult::TimedOut(after) => {
            format!("adapter call timed out after {} ms", after.as_millis())
        }
    };
    if attempt >= retry.attempts {
        return AfterCall::SetAside(format!(
            "adapter failed {attempt} times, the latest: {failure}"
        ));
    }
    AfterCall::Retry {
        delay: retry.backoff.delay(attempt, rng),
        failure,
    }
}

/// An answer to store, the report that says it, and the reports it schedules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// What the inbox keeps for the order.
    pub answer: StoredAnswer,
    /// The `RECEIVED_BY_PARTNER` or `REJECTED_BY_PARTNER` report.
    pub report: StoredReport,
    /// The reports the acceptance scheduled ([`Acceptance::then_report`]), each due at its
    /// [`StoredReport::due_at`].
    pub later: Vec<StoredReport>,
}

impl Answer {
    /// Every report to store with the answer, in one transaction: [`Answer::report`] first.
    pub fn reports(&self) -> Vec<StoredReport> {
        std::iter::once(&self.report)
            .chain(&self.later)
            .cloned()
            .collect()
    }
}

/// The stored form of the adapter's `acceptance` of `order_id` at `now`, and its reports to
/// `reply_to` continuing `traceparent`. The answer's report id is `<order id>:<status>`, the
/// same from any instance: StatusIngest answers a second copy as a duplicate. Each later report
/// is due at `now` + its delay, occurred then unless it says otherwise, carries the tracking id
/// unless it names another, and is `<order id>:later:<n>` unless it names its id: the same
/// whichever instance or retry answered.
pub fn answer(
    order_id: &str,
    acceptance: Acceptance,
    reply_to: &str,
    traceparent: Option<String>,
    now: DateTime<Utc>,
) -> Answer {
    let later = acceptance.later().to_vec();
    let (answer, status, tracking_id, detail, detail_code) = match acceptance {
        Acceptance::Accepted { tracking_id, .. } => (
            StoredAnswer::Accepted {
                tracking_id: tracking_id.clone(),
            },
            OrderStatus::ReceivedByPartner,
            tracking_id,
            String::new(),
            String::new(),
        ),
        Acceptance::Rejected {
            reason,
            detail_code,
        } => (
            StoredAnswer::Rejected {
                reason: reason.clone(),
            },
            OrderStatus::RejectedByPartner,
            String::new(),
            reason,
            detail_code,
        ),
    };
    let later = later
        .into_iter()
        .enumerate()
        .map(|(n, LaterReport { update, after })| {
            let due = chrono::Duration::from_std(after)
                .ok()
                .and_then(|after| now.checked_add_signed(after))
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            StoredReport::pending(
                update
                    .report_id
                    .unwrap_or_else(|| format!("{order_id}:later:{n}")),
                order_id.to_owned(),
                update.status.as_str(),
                update.tracking_id.unwrap_or_else(|| tracking_id.clone()),
                update.detail,
                update.detail_code,
                update.action_required,
                update.occurred_at.unwrap_or(due),
                reply_to.to_owned(),
                traceparent.clone(),
            )
            .due_at(due)
        })
        .collect();
    let report = StoredReport::pending(
        format!("{order_id}:{}", status.short_name()),
        order_id.to_owned(),
        status.short_name(),
        tracking_id,
        detail,
        detail_code,
        false,
        now,
        reply_to.to_owned(),
        traceparent,
    );
    Answer {
        answer,
        report,
        later,
    }
}

/// What to do once the inbox answered a store of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStore {
    /// The inbox holds this answer: send its report now, on the pipeline.
    Submit,
    /// The inbox holds another answer (another instance's, stored first): its report is
    /// sent by the scan, which is woken.
    WakeScan,
}

/// Decides from the order as the inbox `stored` it after our `answer` was offered.
pub fn after_store(answer: &StoredAnswer, stored: &InboxOrder) -> AfterStore {
    let ours = match answer {
        StoredAnswer::Accepted { tracking_id } => {
            stored.state == OrderState::Accepted && stored.tracking_id == *tracking_id
        }
        StoredAnswer::Rejected { reason } => {
            stored.state == OrderState::Rejected && stored.reason == *reason
        }
    };
    if ours {
        AfterStore::Submit
    } else {
        AfterStore::WakeScan
    }
}

/// Seconds from the order's placing (`placed_at`, Waybill's clock) to `now` (this host's);
/// `None` without a valid placing time. A negative difference (clock skew) counts as 0.
pub fn placed_to_answered(
    placed_at: Option<&prost_types::Timestamp>,
    now: DateTime<Utc>,
) -> Option<f64> {
    let placed_at = placed_at?;
    let nanos = u32::try_from(placed_at.nanos).ok()?;
    let placed = DateTime::from_timestamp(placed_at.seconds, nanos)?;
    let micros = (now - placed).num_microseconds().unwrap_or(0);
    Some((micros as f64 / 1e6).max(0.0))
}

#[cfg(test)]
mod tests;
