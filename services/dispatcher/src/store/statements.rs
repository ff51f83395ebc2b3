//! What the backends' batch steps share (`sql.rs`, `postgres.rs`, `sqlite.rs`): which rows a
//! lease takes, the statement that keeps an audit copy, the state lists bound into statements,
//! and which updates of a batch its fence refused.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;
use waybill_proto::v1::OrderStatus;
use waybill_service_kit::db::{Id, Instant, TextList};

use crate::domain::record::{AuditCopy, BatchRecord};

const SAVE_AUDIT_COPY: &str = include_str!("sql/save_audit_copy.sql");

/// States an operator may send back to `PENDING` (the replay's, bound into its statements).
pub use crate::domain::cycle::replay::RETRYABLE_STATES;

/// Order statuses that show the partner has the order: the one list, bound into the statements
/// that look for a confirmation of receipt.
const ACKNOWLEDGING_STATUSES: [OrderStatus; 4] = [
    OrderStatus::ReceivedByPartner,
    OrderStatus::Shipped,
    OrderStatus::Delivered,
    OrderStatus::Exception,
];

/// Headers as stored in the audit outbox (a JSON array of `[name, value]`).
pub(super) fn headers_to_json(headers: &[(String, String)]) -> String {
    serde_json::to_string(headers).unwrap_or_else(|_| "[]".to_owned())
}

/// Which rows a lease takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LeaseKind {
    /// `PENDING`, or `RETRYING` rows due.
    Due,
    /// `SENT` rows whose handover deadline passed.
    Overdue,
}

/// The statement that keeps `copy` in the audit outbox (the same on both backends).
pub(super) fn save_audit_copy<'q, DB>(
    copy: &'q AuditCopy,
    now: DateTime<Utc>,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    Id: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Instant: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q [u8]: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i32: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query(SAVE_AUDIT_COPY)
        .bind(Id(copy.order_id))
        .bind(copy.topic.as_str())
        .bind(copy.payload.as_slice())
        .bind(headers_to_json(&copy.headers))
        .bind(copy.attempts)
        .bind(copy.last_error.as_str())
        .bind(Instant(copy.due_at))
        .bind(Instant(now))
}

/// The updates of `batch` the fence refused.
pub(super) fn fenced(batch: &BatchRecord, applied: &HashSet<Uuid>) -> Vec<Uuid> {
    batch
        .updates
        .iter()
        .map(|u| u.order_id)
        .filter(|id| !applied.contains(id))
        .collect()
}

/// The acknowledging statuses as bound into statements.
pub(super) fn acknowledging_statuses() -> TextList {
    ACKNOWLEDGING_STATUSES
        .iter()
        .map(|status| status.short_name())
        .collect()
}
