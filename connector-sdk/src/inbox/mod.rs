//! The durable inbox: the connector's source of truth, not the broker's committed offsets.
//!
//! - An order id is recorded ([`Inbox::begin`]) before the adapter is called; a redelivered
//!   order that already has an answer is never handed to the adapter again.
//! - The adapter's answer and the report that says it are stored in one transaction
//!   ([`Inbox::record_answer`]) before anything is sent, so a crash between the two re-sends
//!   the stored answer.
//! - Reports stay `pending` until StatusIngest confirms them; the report sender picks them up
//!   after a restart.
//! - Records and orders that were set aside are kept with their reason.
//!
//! [`SqlInbox`] implements it on SQLite (the default: one file per connector, at a path the
//! partner chooses) and on Postgres (several connector instances of one partner sharing one
//! inbox, so that an instance taking over a partition knows what the other one did).

mod sql;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use sql::SqlInbox;

/// Why the inbox could not be read or written. The SDK retries; the partition waits.
#[derive(Debug, Clone, thiserror::Error)]
#[error("inbox: {0}")]
pub struct InboxError(pub String);

impl From<sqlx::Error> for InboxError {
    fn from(error: sqlx::Error) -> Self {
        Self(error.to_string())
    }
}

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
        }
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

/// The inbox's operations. Every method is scoped to one partner id, so partners may share a
/// database. Implementations must make each method atomic.
#[async_trait]
pub trait Inbox: Send + Sync + std::fmt::Debug + 'static {
    /// Records a delivery of `order`: inserts it as `started` on its first delivery, counts the
    /// delivery otherwise, and returns the row as it stands after that. While no answer is
    /// stored (the row is `started`) it also counts the adapter call that follows, so the
    /// first attempt costs one write, not two.
    async fn begin(&self, partner: &str, order: &OrderDelivery) -> Result<InboxOrder, InboxError>;

    /// Counts a further adapter call for `order_id` (a retry after a failed attempt; the
    /// first call of a delivery is counted by [`Inbox::begin`]), before the call.
    async fn note_adapter_call(&self, partner: &str, order_id: &str) -> Result<(), InboxError>;

    /// Stores the adapter's answer and the report that says it, atomically; the first answer
    /// stored wins (a late second caller gets the first answer back, and its report is not
    /// added). Returns the order as stored.
    async fn record_answer(
        &self,
        partner: &str,
        order_id: &str,
        answer: &StoredAnswer,
        report: &StoredReport,
    ) -> Result<InboxOrder, InboxError>;

    /// Marks `order_id` set aside with `reason` and keeps a set-aside row for its record.
    async fn set_aside_order(
        &self,
        partner: &str,
        order_id: &str,
        origin: &RecordOrigin,
        reason: &str,
    ) -> Result<(), InboxError>;

    /// Keeps a set-aside row for a record that is not an order. Returns `false` when this
    /// record had been set aside before (a redelivery).
    async fn set_aside_record(
        &self,
        partner: &str,
        origin: &RecordOrigin,
        reason: &str,
    ) -> Result<bool, InboxError>;

    /// Whether the record at `origin` was set aside before.
    async fn was_set_aside(&self, partner: &str, origin: &RecordOrigin)
    -> Result<bool, InboxError>;

    /// The order, if it was ever delivered.
    async fn order(&self, partner: &str, order_id: &str) -> Result<Option<InboxOrder>, InboxError>;

    /// Adds a report (a later status from the adapter). A report id already stored is left as
    /// it is (returns `false`).
    async fn add_report(&self, partner: &str, report: &StoredReport) -> Result<bool, InboxError>;

    /// Pending reports due at `now`, oldest first, at most `limit`.
    async fn due_reports(
        &self,
        partner: &str,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<StoredReport>, InboxError>;

    /// When the earliest pending report is due, if any.
    async fn next_report_due(&self, partner: &str) -> Result<Option<DateTime<Utc>>, InboxError>;

    /// StatusIngest confirmed the report.
    async fn report_confirmed(&self, partner: &str, report_id: &str) -> Result<(), InboxError>;

    /// An attempt failed; try again at `next_attempt_at`.
    async fn report_failed(
        &self,
        partner: &str,
        report_id: &str,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), InboxError>;

    /// StatusIngest refused the report for good (or the retry budget is spent).
    async fn report_refused(
        &self,
        partner: &str,
        report_id: &str,
        error: &str,
    ) -> Result<(), InboxError>;

    /// Every report of `order_id`, oldest first.
    async fn reports_of(
        &self,
        partner: &str,
        order_id: &str,
    ) -> Result<Vec<StoredReport>, InboxError>;

    /// The set-aside rows, oldest first, at most `limit`.
    async fn set_aside_rows(
        &self,
        partner: &str,
        limit: i64,
    ) -> Result<Vec<SetAsideRow>, InboxError>;

    /// Counts by state.
    async fn counts(&self, partner: &str) -> Result<InboxCounts, InboxError>;

    /// Forgets orders last touched before `before` whose reports are all settled (retention:
    /// keep rows longer than the partner's handover deadline × resend budget). Returns how
    /// many orders were forgotten.
    async fn purge(&self, partner: &str, before: DateTime<Utc>) -> Result<u64, InboxError>;
}
