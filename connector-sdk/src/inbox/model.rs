//! What the inbox records: orders and where they stand, reports, set-aside records, counts.

use chrono::{DateTime, Utc};

/// Where an order stands in the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderState {
    /// Recorded; the adapter was (or is being) called, no answer stored yet.
    Started,
    /// The partner accepted it.
    Accepted,
    /// The partner rejected it.
    Rejected,
    /// Set aside (permanent adapter error, retries exhausted).
    SetAside,
}

impl OrderState {
    /// The name stored in the inbox.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::SetAside => "set_aside",
        }
    }

    /// The inverse of [`OrderState::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "started" => Self::Started,
            "accepted" => Self::Accepted,
            "rejected" => Self::Rejected,
            "set_aside" => Self::SetAside,
            _ => return None,
        })
    }
}

/// An order as the inbox records it on delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderDelivery {
    /// The order id.
    pub order_id: String,
    /// Where its reports go.
    pub reply_to: String,
    /// The region that sent it.
    pub region: String,
    /// The trace to continue in its reports.
    pub traceparent: Option<String>,
}

/// What the inbox says about a delivered order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxOrder {
    /// The order id.
    pub order_id: String,
    /// Where it stands.
    pub state: OrderState,
    /// Where its reports go (the reply-to of its first delivery).
    pub reply_to: String,
    /// The region that sent it.
    pub region: String,
    /// The trace its reports continue.
    pub traceparent: Option<String>,
    /// The tracking id, once accepted.
    pub tracking_id: String,
    /// The rejection or set-aside reason.
    pub reason: String,
    /// How many times it was delivered (1 for the first).
    pub deliveries: i64,
    /// How many times the adapter was called for it, retries included.
    pub adapter_calls: i64,
}

/// Where a report stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportState {
    /// Not confirmed by StatusIngest yet.
    Pending,
    /// StatusIngest took it (or had it: a duplicate).
    Confirmed,
    /// StatusIngest refused it for good; the reason is kept.
    Refused,
}

impl ReportState {
    /// The name stored in the inbox.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Refused => "refused",
        }
    }

    /// The inverse of [`ReportState::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => Self::Pending,
            "confirmed" => Self::Confirmed,
            "refused" => Self::Refused,
            _ => return None,
        })
    }
}

/// A status report kept in the inbox until StatusIngest confirms it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReport {
    /// Unique per report of this partner; a retry keeps it (so it is a duplicate, not a replay).
    pub report_id: String,
    /// The order.
    pub order_id: String,
    /// Status short name: `RECEIVED_BY_PARTNER`, `REJECTED_BY_PARTNER`, `SHIPPED`, …
    pub status: String,
    /// Tracking id (`""` when none).
    pub tracking_id: String,
    /// Free text.
    pub detail: String,
    /// Machine-readable detail (`""` when none).
    pub detail_code: String,
    /// Someone must act.
    pub action_required: bool,
    /// When it happened: fixed when the report is stored, the same in every attempt's token.
    pub occurred_at: DateTime<Utc>,
    /// The StatusIngest address.
    pub reply_to: String,
    /// The trace the report continues.
    pub traceparent: Option<String>,
    /// Where it stands.
    pub state: ReportState,
    /// Attempts made so far.
    pub attempts: i64,
    /// The latest failure, or StatusIngest's refusal.
    pub last_error: String,
    /// When it is due: in a report to store, `None` for as soon as it is stored, or the time
    /// a report scheduled for later ([`Acceptance::then_report`](crate::partner::Acceptance::then_report))
    /// is first sent; read from the inbox, when its next attempt is due.
    pub due_at: Option<DateTime<Utc>>,
}

impl StoredReport {
    /// A new pending report.
    #[allow(clippy::too_many_arguments)]
    pub fn pending(
        report_id: String,
        order_id: String,
        status: &str,
        tracking_id: String,
        detail: String,
        detail_code: String,
        action_required: bool,
        occurred_at: DateTime<Utc>,
        reply_to: String,
        traceparent: Option<String>,
    ) -> Self {
        Self {
            report_id,
            order_id,
            status: status.to_owned(),
            tracking_id,
            detail,
            detail_code,
            action_required,
            occurred_at,
            reply_to,
            traceparent,
            state: ReportState::Pending,
            attempts: 0,
            last_error: String::new(),
            due_at: None,
        }
    }

    /// The same report, first due at `at` instead of as soon as it is stored.
    pub fn due_at(mut self, at: DateTime<Utc>) -> Self {
        self.due_at = Some(at);
        self
    }
}

/// The adapter's answer to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredAnswer {
    /// Accepted with a tracking id.
    Accepted {
        /// The tracking id.
        tracking_id: String,
    },
    /// Rejected with a reason.
    Rejected {
        /// The reason.
        reason: String,
    },
}

/// Where a record came from, for a set-aside row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordOrigin {
    /// The cluster's name (as configured).
    pub cluster: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The record key, lossily as text.
    pub key: String,
}

/// A record or order set aside, as kept in the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAsideRow {
    /// Where the record was.
    pub origin: RecordOrigin,
    /// The order, when the record decoded (`""` when it did not).
    pub order_id: String,
    /// Why it was set aside.
    pub reason: String,
}

/// Counts for health and metrics hooks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxCounts {
    /// Orders recorded whose adapter call has no stored answer yet.
    pub started: i64,
    /// Orders accepted.
    pub accepted: i64,
    /// Orders rejected.
    pub rejected: i64,
    /// Orders set aside.
    pub orders_set_aside: i64,
    /// Records set aside (undecodable, or orders set aside).
    pub records_set_aside: i64,
    /// Reports waiting for StatusIngest.
    pub reports_pending: i64,
    /// Reports StatusIngest confirmed.
    pub reports_confirmed: i64,
    /// Reports StatusIngest refused for good.
    pub reports_refused: i64,
}
