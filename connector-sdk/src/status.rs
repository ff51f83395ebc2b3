//! Later statuses: the adapter reports `SHIPPED`, `DELIVERED` or `EXCEPTION` whenever the
//! partner's system learns of it, from anywhere in the partner's program, through a
//! [`StatusReporter`] (cheap to clone). A report is stored in the inbox before
//! [`StatusReporter::report`] returns and sent from there, so it survives a restart and is
//! retried until StatusIngest confirms it.
//!
//! A status already known when the adapter answers (`SHIPPED` at the next round) is better
//! scheduled with the answer ([`Acceptance::then_report`](crate::partner::Acceptance::then_report)):
//! stored in the answer's own transaction, so nothing between answering and reporting can
//! lose it. Not from a task the adapter spawns to call [`StatusReporter::report`] after a
//! sleep: a process that dies meanwhile loses the status, and the redelivered order is
//! answered from the inbox without calling the adapter again.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::{
    clock::SharedClock,
    inbox::{Inbox, InboxError, OrderState, StoredReport},
};

/// The statuses a partner reports after accepting an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartnerStatus {
    /// On its way (detail codes: `OUT_FOR_DELIVERY`, `AVAILABLE_FOR_PICKUP`).
    Shipped,
    /// Delivered: final.
    Delivered,
    /// A problem (detail codes: `DELIVERY_ATTEMPTED`, `DELAYED`, `ADDRESS_NOT_FOUND`,
    /// `RETURN_TO_SENDER`, `DAMAGED`, `LOST`, `CANCELLED`).
    Exception,
}

impl PartnerStatus {
    /// The status short name StatusIngest knows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shipped => "SHIPPED",
            Self::Delivered => "DELIVERED",
            Self::Exception => "EXCEPTION",
        }
    }
}

/// One status report, built with the constructors and `with_*` methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub(crate) status: PartnerStatus,
    pub(crate) tracking_id: Option<String>,
    pub(crate) detail: String,
    pub(crate) detail_code: String,
    pub(crate) action_required: bool,
    pub(crate) occurred_at: Option<DateTime<Utc>>,
    pub(crate) report_id: Option<String>,
}

impl StatusUpdate {
    fn new(status: PartnerStatus) -> Self {
        Self {
            status,
            tracking_id: None,
            detail: String::new(),
            detail_code: String::new(),
            action_required: false,
            occurred_at: None,
            report_id: None,
        }
    }

    /// `SHIPPED`.
    pub fn shipped() -> Self {
        Self::new(PartnerStatus::Shipped)
    }

    /// `DELIVERED`.
    pub fn delivered() -> Self {
        Self::new(PartnerStatus::Delivered)
    }

    /// `EXCEPTION` with a machine-readable `detail_code` such as `ADDRESS_NOT_FOUND`.
    pub fn exception(detail_code: impl Into<String>) -> Self {
        Self::new(PartnerStatus::Exception).with_detail_code(detail_code)
    }

    /// Free text for people.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    /// A machine-readable detail code: upper-case letters, digits and `_`, at most 64.
    pub fn with_detail_code(mut self, code: impl Into<String>) -> Self {
        self.detail_code = code.into();
        self
    }

    /// Someone (customer or operator) must act.
    pub fn action_required(mut self) -> Self {
        self.action_required = true;
        self
    }

    /// The tracking id to report (default: the one the order was accepted with).
    pub fn with_tracking_id(mut self, tracking_id: impl Into<String>) -> Self {
        self.tracking_id = Some(tracking_id.into());
        self
    }

    /// When it happened (default: when [`StatusReporter::report`] is called).
    pub fn occurred_at(mut self, at: DateTime<Utc>) -> Self {
        self.occurred_at = Some(at);
        self
    }

    /// The partner's own id for this report, so that reporting the same event twice (say,
    /// after the partner's own restart) is a duplicate, not a second event. Default: a new
    /// UUID per call.
    pub fn with_report_id(mut self, report_id: impl Into<String>) -> Self {
        self.report_id = Some(report_id.into());
        self
    }

    /// The status.
    pub fn status(&self) -> PartnerStatus {
        self.status
    }

    /// Whether StatusIngest would take it: a detail code of its form, a detail not too long,
    /// a report id (when one is given) of 1 to 128 characters.
    pub fn check(&self) -> Result<(), ReportError> {
        check_detail_code(&self.detail_code)?;
        if self.detail.chars().count() > MAX_DETAIL_CHARS {
            return Err(ReportError::DetailTooLong);
        }
        if let Some(report_id) = &self.report_id {
            check_report_id(report_id)?;
        }
        Ok(())
    }
}

/// Why a report was not stored.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// This connector never received the order.
    #[error("order {0} was never delivered to this connector")]
    UnknownOrder(String),
    /// The order was not accepted (rejected or set aside): there is nothing to report on.
    #[error("order {order_id} is {state}, not accepted: there is nothing to report on")]
    NotAccepted {
        /// The order.
        order_id: String,
        /// Its state in the inbox.
        state: &'static str,
    },
    /// The detail is longer than StatusIngest takes.
    #[error("detail is longer than {MAX_DETAIL_CHARS} characters")]
    DetailTooLong,
    /// The detail code breaks StatusIngest's rule.
    #[error(
        "detail code {0:?} must be at most 64 upper-case letters, digits or '_' (ADDRESS_NOT_FOUND)"
    )]
    InvalidDetailCode(String),
    /// The report id is empty or too long.
    #[error("report id must be 1 to 128 characters")]
    InvalidReportId,
    /// The inbox could not store it; nothing was stored.
    #[error(transparent)]
    Inbox(#[from] InboxError),
}

impl ReportError {
    /// Whether reporting the same update again may succeed: only when the inbox could not be
    /// reached for a moment. An order never delivered or not accepted, or a field that breaks
    /// StatusIngest's rules, is refused again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Inbox(error) => error.is_retryable(),
            Self::UnknownOrder(_)
            | Self::NotAccepted { .. }
            | Self::DetailTooLong
            | Self::InvalidDetailCode(_)
            | Self::InvalidReportId => false,
        }
    }
}

/// The longest detail StatusIngest takes, in characters.
const MAX_DETAIL_CHARS: usize = 1024;

/// Reports later statuses of orders this connector accepted. Cheap to clone; use it from any
/// task.
#[derive(Debug, Clone)]
pub struct StatusReporter {
    pub(crate) partner_id: String,
    pub(crate) inbox: Arc<dyn Inbox>,
    pub(crate) wake: Arc<Notify>,
    pub(crate) clock: SharedClock,
}

impl StatusReporter {
    /// Stores `update` for `order_id` and wakes the sender. Returns the report id. The order
    /// must have been accepted; an adapter may call this from a task it spawned inside
    /// `request_shipment`, before its answer is stored: the call then waits for the answer
    /// (up to [`ANSWER_WAIT`]). When this returns, the report is durable: it is sent (to the reply-to address the order carried,
    /// continuing the order's trace) and retried until StatusIngest confirms it, across
    /// restarts.
    pub async fn report(
        &self,
        order_id: &str,
        update: StatusUpdate,
    ) -> Result<String, ReportError> {
        update.check()?;
        let order = self.accepted_order(order_id).await?;
        if order.state != OrderState::Accepted {
            return Err(ReportError::NotAccepted {
                order_id: order_id.to_owned(),
                state: order.state.as_str(),
            });
        }
        let report_id = update
            .report_id
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let report = StoredReport::pending(
            report_id.clone(),
            order_id.to_owned(),
            update.status.as_str(),
            update.tracking_id.unwrap_or(order.tracking_id),
            update.detail,
            update.detail_code,
            update.action_required,
            update.occurred_at.unwrap_or_else(|| self.clock.now()),
            order.reply_to,
            // The connector's span for this order (its parent in the trace).
            order.traceparent,
        );
        self.inbox.add_report(&self.partner_id, &report).await?;
        self.wake.notify_one();
        Ok(report_id)
    }
}

impl StatusReporter {
    /// The order as stored; while its answer is still being stored (an adapter reporting from
    /// a task it spawned inside `request_shipment`), waits for it, up to [`ANSWER_WAIT`].
    async fn accepted_order(
        &self,
        order_id: &str,
    ) -> Result<crate::inbox::InboxOrder, ReportError> {
        let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
        let mut pause = std::time::Duration::from_millis(10);
        loop {
            let order = self
                .inbox
                .order(&self.partner_id, order_id)
                .await?
                .ok_or_else(|| ReportError::UnknownOrder(order_id.to_owned()))?;
            if order.state != OrderState::Started || tokio::time::Instant::now() >= deadline {
                return Ok(order);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(500));
        }
    }
}

/// How long [`StatusReporter::report`] waits for the answer of an order whose adapter call
/// is still running.
pub const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// StatusIngest's rule for report ids.
fn check_report_id(report_id: &str) -> Result<(), ReportError> {
    if report_id.trim().is_empty() || report_id.chars().count() > 128 {
        Err(ReportError::InvalidReportId)
    } else {
        Ok(())
    }
}

/// StatusIngest's rule for detail codes.
pub(crate) fn check_detail_code(code: &str) -> Result<(), ReportError> {
    let ok = code.len() <= 64
        && code
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ReportError::InvalidDetailCode(code.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_codes_follow_status_ingest_rules() {
        assert!(check_detail_code("").is_ok());
        assert!(check_detail_code("ADDRESS_NOT_FOUND").is_ok());
        assert!(check_detail_code("address").is_err());
        assert!(check_detail_code(&"A".repeat(65)).is_err());
        let refused = check_detail_code("address").expect_err("lower case");
        assert!(!refused.is_retryable());
        assert!(refused.to_string().contains("\"address\""), "{refused}");
    }

    #[test]
    fn only_an_unavailable_inbox_is_worth_reporting_again_for() {
        assert!(ReportError::from(InboxError::Unavailable("busy".into())).is_retryable());
        assert!(!ReportError::UnknownOrder("o-1".into()).is_retryable());
        assert!(!ReportError::DetailTooLong.is_retryable());
    }

    #[test]
    fn an_update_is_checked_against_status_ingest_rules_before_it_is_stored() {
        assert!(StatusUpdate::shipped().check().is_ok());
        assert!(
            StatusUpdate::exception("DELAYED")
                .with_report_id("o-1:delayed")
                .check()
                .is_ok()
        );
        assert!(matches!(
            StatusUpdate::exception("delayed").check(),
            Err(ReportError::InvalidDetailCode(_))
        ));
        assert!(matches!(
            StatusUpdate::shipped()
                .with_detail("x".repeat(MAX_DETAIL_CHARS + 1))
                .check(),
            Err(ReportError::DetailTooLong)
        ));
        for id in [" ", &"r".repeat(129)] {
            assert!(matches!(
                StatusUpdate::shipped().with_report_id(id).check(),
                Err(ReportError::InvalidReportId)
            ));
        }
    }

    #[test]
    fn updates_say_what_they_report() {
        let update = StatusUpdate::exception("DELAYED")
            .with_detail("storm")
            .action_required();
        assert_eq!(update.status(), PartnerStatus::Exception);
        assert_eq!(update.detail_code, "DELAYED");
        assert!(update.action_required);
        assert_eq!(StatusUpdate::shipped().status().as_str(), "SHIPPED");
    }
}
