//! What the inbox's statements share: the schema (created when the inbox opens), the column
//! lists and inserts used by several methods, the row structs they decode into (one per row
//! shape, for both backends) and the instant encoding (Unix microseconds in `BIGINT`).

use chrono::{DateTime, Utc};

use crate::inbox::{
    error::InboxError,
    model::{InboxOrder, OrderState, ReportState, StoredReport},
};

pub(super) const SCHEMA: [&str; 5] = [
    "CREATE TABLE IF NOT EXISTS waybill_inbox_orders (
        partner_id    TEXT NOT NULL,
        order_id      TEXT NOT NULL,
        state         TEXT NOT NULL,
        reply_to      TEXT NOT NULL,
        region        TEXT NOT NULL,
        traceparent   TEXT,
        tracking_id   TEXT NOT NULL DEFAULT '',
        reason        TEXT NOT NULL DEFAULT '',
        deliveries    BIGINT NOT NULL,
        adapter_calls BIGINT NOT NULL DEFAULT 0,
        first_seen_at BIGINT NOT NULL,
        updated_at    BIGINT NOT NULL,
        PRIMARY KEY (partner_id, order_id)
    )",
    "CREATE TABLE IF NOT EXISTS waybill_inbox_reports (
        partner_id      TEXT NOT NULL,
        report_id       TEXT NOT NULL,
        order_id        TEXT NOT NULL,
        status          TEXT NOT NULL,
        tracking_id     TEXT NOT NULL,
        detail          TEXT NOT NULL,
        detail_code     TEXT NOT NULL,
        action_required BOOLEAN NOT NULL,
        occurred_at     BIGINT NOT NULL,
        reply_to        TEXT NOT NULL,
        traceparent     TEXT,
        state           TEXT NOT NULL,
        attempts        BIGINT NOT NULL DEFAULT 0,
        next_attempt_at BIGINT NOT NULL,
        last_error      TEXT NOT NULL DEFAULT '',
        created_at      BIGINT NOT NULL,
        updated_at      BIGINT NOT NULL,
        PRIMARY KEY (partner_id, report_id)
    )",
    "CREATE INDEX IF NOT EXISTS waybill_inbox_reports_due
        ON waybill_inbox_reports (partner_id, state, next_attempt_at)",
    "CREATE INDEX IF NOT EXISTS waybill_inbox_reports_order
        ON waybill_inbox_reports (partner_id, order_id)",
    "CREATE TABLE IF NOT EXISTS waybill_inbox_set_aside (
        partner_id      TEXT NOT NULL,
        cluster         TEXT NOT NULL,
        topic           TEXT NOT NULL,
        kafka_partition INTEGER NOT NULL,
        kafka_offset    BIGINT NOT NULL,
        record_key      TEXT NOT NULL,
        order_id        TEXT NOT NULL DEFAULT '',
        reason          TEXT NOT NULL,
        set_aside_at    BIGINT NOT NULL,
        PRIMARY KEY (partner_id, cluster, topic, kafka_partition, kafka_offset)
    )",
];

pub(super) const ORDER_COLUMNS: &str = "order_id, state, reply_to, region, traceparent, tracking_id, reason, deliveries, adapter_calls";

pub(super) const REPORT_COLUMNS: &str = "report_id, order_id, status, tracking_id, detail, detail_code, \
     action_required, occurred_at, reply_to, traceparent, state, attempts, last_error, \
     next_attempt_at";

pub(super) const INSERT_REPORT: &str = "INSERT INTO waybill_inbox_reports
    (partner_id, report_id, order_id, status, tracking_id, detail, detail_code,
     action_required, occurred_at, reply_to, traceparent, state, attempts, next_attempt_at,
     last_error, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending', 0, $13, '', $12, $12)
    ON CONFLICT (partner_id, report_id) DO NOTHING";

pub(super) const INSERT_SET_ASIDE: &str = "INSERT INTO waybill_inbox_set_aside
    (partner_id, cluster, topic, kafka_partition, kafka_offset, record_key, order_id, reason,
     set_aside_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (partner_id, cluster, topic, kafka_partition, kafka_offset) DO NOTHING";

#[derive(sqlx::FromRow)]
pub(super) struct OrderRow {
    pub(super) order_id: String,
    pub(super) state: String,
    pub(super) reply_to: String,
    pub(super) region: String,
    pub(super) traceparent: Option<String>,
    pub(super) tracking_id: String,
    pub(super) reason: String,
    pub(super) deliveries: i64,
    pub(super) adapter_calls: i64,
}

impl OrderRow {
    pub(super) fn into_order(self) -> Result<InboxOrder, InboxError> {
        Ok(InboxOrder {
            state: OrderState::parse(&self.state).ok_or_else(|| {
                InboxError::Corrupt(format!("unknown order state {:?}", self.state))
            })?,
            order_id: self.order_id,
            reply_to: self.reply_to,
            region: self.region,
            traceparent: self.traceparent,
            tracking_id: self.tracking_id,
            reason: self.reason,
            deliveries: self.deliveries,
            adapter_calls: self.adapter_calls,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct ReportRow {
    pub(super) report_id: String,
    pub(super) order_id: String,
    pub(super) status: String,
    pub(super) tracking_id: String,
    pub(super) detail: String,
    pub(super) detail_code: String,
    pub(super) action_required: bool,
    pub(super) occurred_at: i64,
    pub(super) reply_to: String,
    pub(super) traceparent: Option<String>,
    pub(super) state: String,
    pub(super) attempts: i64,
    pub(super) last_error: String,
    pub(super) next_attempt_at: i64,
}

impl ReportRow {
    pub(super) fn into_report(self) -> Result<StoredReport, InboxError> {
        Ok(StoredReport {
            state: ReportState::parse(&self.state).ok_or_else(|| {
                InboxError::Corrupt(format!("unknown report state {:?}", self.state))
            })?,
            occurred_at: from_micros(self.occurred_at)?,
            report_id: self.report_id,
            order_id: self.order_id,
            status: self.status,
            tracking_id: self.tracking_id,
            detail: self.detail,
            detail_code: self.detail_code,
            action_required: self.action_required,
            reply_to: self.reply_to,
            traceparent: self.traceparent,
            attempts: self.attempts,
            last_error: self.last_error,
            due_at: Some(from_micros(self.next_attempt_at)?),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct SetAsideDbRow {
    pub(super) cluster: String,
    pub(super) topic: String,
    pub(super) kafka_partition: i32,
    pub(super) kafka_offset: i64,
    pub(super) record_key: String,
    pub(super) order_id: String,
    pub(super) reason: String,
}

pub(super) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

pub(super) fn from_micros(value: i64) -> Result<DateTime<Utc>, InboxError> {
    DateTime::from_timestamp_micros(value)
        .ok_or_else(|| InboxError::Corrupt(format!("instant {value} out of range")))
}
