//! The durable inbox: the connector's source of truth, not the broker's committed offsets.
//!
//! - An order id is recorded ([`Inbox::begin`]) before the adapter is called; a redelivered
//!   order that already has an answer is never handed to the adapter again.
//! - The adapter's answer, the report that says it and the reports it schedules for later
//!   are stored in one transaction ([`Inbox::record_answer`]) before anything is sent, so a
//!   crash between the two re-sends the stored answer, and a scheduled report is never lost.
//! - Reports stay `pending` until StatusIngest confirms them; the report sender picks them up
//!   after a restart.
//! - Records and orders that were set aside are kept with their reason.
//!
//! [`SqlInbox`] implements it on SQLite (the default: one file per connector, at a path the
//! partner chooses) and on Postgres (several connector instances of one partner sharing one
//! inbox, so that an instance taking over a partition knows what the other one did).

//!
//! The types are in leaf modules (`error`, `model`) that the SQL implementation imports
//! directly; this module holds the [`Inbox`] trait and re-exports them.

mod error;
mod model;
mod sql;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use self::{
    error::InboxError,
    model::{
        InboxCounts, InboxOrder, OrderDelivery, OrderState, RecordOrigin, ReportState, SetAsideRow,
        StoredAnswer, StoredReport,
    },
    sql::SqlInbox,
};

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

    /// Stores the adapter's answer and its `reports` (the one that says the answer, then
    /// those it schedules for later, each due at its [`StoredReport::due_at`]), atomically;
    /// the first answer stored wins (a late second caller gets the first answer back, and its
    /// reports are not added). Returns the order as stored.
    async fn record_answer(
        &self,
        partner: &str,
        order_id: &str,
        answer: &StoredAnswer,
        reports: &[StoredReport],
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

    /// Adds a report (a later status from the adapter), due at its [`StoredReport::due_at`]
    /// or at once. A report id already stored is left as it is (returns `false`).
    async fn add_report(&self, partner: &str, report: &StoredReport) -> Result<bool, InboxError>;

    /// Pending reports due at `now`, oldest first, at most `limit`.
    async fn due_reports(
        &self,
        partner: &str,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<StoredReport>, InboxError>;

    /// When the earliest pending report due after `after` is due, if any (reports due
    /// already are left out: the scan that asks has just taken them, or the pipeline is
    /// sending them).
    async fn next_report_due(
        &self,
        partner: &str,
        after: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, InboxError>;

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
