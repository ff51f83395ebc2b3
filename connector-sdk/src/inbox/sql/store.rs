//! [`Inbox`] on [`SqlInbox`]: one SQL text per method for both backends (`$N` parameters),
//! reads on whichever pool the inbox has, writes through its group-commit writer.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    Pool, SqlInbox,
    rows::{
        INSERT_REPORT, INSERT_SET_ASIDE, ORDER_COLUMNS, OrderRow, REPORT_COLUMNS, ReportRow,
        SetAsideDbRow, from_micros, micros,
    },
};
use crate::inbox::{
    Inbox,
    error::InboxError,
    model::{
        InboxCounts, InboxOrder, OrderDelivery, OrderState, RecordOrigin, ReportState, SetAsideRow,
        StoredAnswer, StoredReport,
    },
};

/// Inserts a report unless its id is stored already, due at its `due_at` or at `$now`;
/// evaluates to `true` when inserted.
macro_rules! insert_report {
    ($executor:expr, $partner:expr, $report:expr, $now:expr) => {
        sqlx::query(INSERT_REPORT)
            .bind($partner)
            .bind(&$report.report_id)
            .bind(&$report.order_id)
            .bind(&$report.status)
            .bind(&$report.tracking_id)
            .bind(&$report.detail)
            .bind(&$report.detail_code)
            .bind($report.action_required)
            .bind(micros($report.occurred_at))
            .bind(&$report.reply_to)
            .bind(&$report.traceparent)
            .bind($now)
            .bind($report.due_at.map_or($now, micros))
            .execute($executor)
            .await?
            .rows_affected()
            == 1
    };
}

/// Inserts a set-aside row unless that record has one; evaluates to `true` when inserted.
macro_rules! insert_set_aside {
    ($executor:expr, $partner:expr, $origin:expr, $order_id:expr, $reason:expr, $now:expr) => {
        sqlx::query(INSERT_SET_ASIDE)
            .bind($partner)
            .bind(&$origin.cluster)
            .bind(&$origin.topic)
            .bind($origin.partition)
            .bind($origin.offset)
            .bind(&$origin.key)
            .bind($order_id)
            .bind($reason)
            .bind($now)
            .execute($executor)
            .await?
            .rows_affected()
            == 1
    };
}

#[async_trait]
impl Inbox for SqlInbox {
    async fn begin(&self, partner: &str, order: &OrderDelivery) -> Result<InboxOrder, InboxError> {
        let sql = format!(
            "INSERT INTO waybill_inbox_orders
                (partner_id, order_id, state, reply_to, region, traceparent, deliveries,
                 adapter_calls, first_seen_at, updated_at)
             VALUES ($1, $2, 'started', $3, $4, $5, 1, 1, $6, $6)
             ON CONFLICT (partner_id, order_id) DO UPDATE
                SET deliveries = waybill_inbox_orders.deliveries + 1,
                    adapter_calls = waybill_inbox_orders.adapter_calls
                        + CASE WHEN waybill_inbox_orders.state = 'started' THEN 1 ELSE 0 END,
                    updated_at = excluded.updated_at
             RETURNING {ORDER_COLUMNS}"
        );
        let (partner, order, now) = (partner.to_owned(), order.clone(), self.now_micros());
        let row: OrderRow = write!(self, move |conn| {
            Ok(sqlx::query_as(&sql)
                .bind(&partner)
                .bind(&order.order_id)
                .bind(&order.reply_to)
                .bind(&order.region)
                .bind(&order.traceparent)
                .bind(now)
                .fetch_one(&mut *conn)
                .await?)
        })?;
        row.into_order()
    }

    async fn note_adapter_call(&self, partner: &str, order_id: &str) -> Result<(), InboxError> {
        let sql =
            "UPDATE waybill_inbox_orders SET adapter_calls = adapter_calls + 1, updated_at = $3
                   WHERE partner_id = $1 AND order_id = $2";
        let (partner, order_id, now) = (partner.to_owned(), order_id.to_owned(), self.now_micros());
        write!(self, move |conn| {
            sqlx::query(sql)
                .bind(&partner)
                .bind(&order_id)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    async fn record_answer(
        &self,
        partner: &str,
        order_id: &str,
        answer: &StoredAnswer,
        reports: &[StoredReport],
    ) -> Result<InboxOrder, InboxError> {
        let (state, tracking_id, reason) = match answer {
            StoredAnswer::Accepted { tracking_id } => {
                (OrderState::Accepted, tracking_id.as_str(), "")
            }
            StoredAnswer::Rejected { reason } => (OrderState::Rejected, "", reason.as_str()),
        };
        // The answer and the row it leaves in one round trip (a thread hand-off on SQLite); the
        // row is read on its own only when the order was answered before (a redelivery).
        let update = format!(
            "UPDATE waybill_inbox_orders SET state = $3, tracking_id = $4, reason = $5, updated_at = $6
             WHERE partner_id = $1 AND order_id = $2 AND state = 'started'
             RETURNING {ORDER_COLUMNS}"
        );
        let select = format!(
            "SELECT {ORDER_COLUMNS} FROM waybill_inbox_orders WHERE partner_id = $1 AND order_id = $2"
        );
        let now = self.now_micros();
        let (partner, order_id, tracking_id, reason, reports) = (
            partner.to_owned(),
            order_id.to_owned(),
            tracking_id.to_owned(),
            reason.to_owned(),
            reports.to_vec(),
        );
        let row: OrderRow = write!(self, move |conn| {
            let updated: Option<OrderRow> = sqlx::query_as(&update)
                .bind(&partner)
                .bind(&order_id)
                .bind(state.as_str())
                .bind(&tracking_id)
                .bind(&reason)
                .bind(now)
                .fetch_optional(&mut *conn)
                .await?;
            let Some(row) = updated else {
                return Ok(sqlx::query_as(&select)
                    .bind(&partner)
                    .bind(&order_id)
                    .fetch_one(&mut *conn)
                    .await?);
            };
            for report in &reports {
                let _added = insert_report!(&mut *conn, &partner, report, now);
            }
            Ok(row)
        })?;
        row.into_order()
    }

    async fn set_aside_order(
        &self,
        partner: &str,
        order_id: &str,
        origin: &RecordOrigin,
        reason: &str,
    ) -> Result<(), InboxError> {
        let update =
            "UPDATE waybill_inbox_orders SET state = 'set_aside', reason = $3, updated_at = $4
                      WHERE partner_id = $1 AND order_id = $2 AND state = 'started'";
        let now = self.now_micros();
        let (partner, order_id, origin, reason) = (
            partner.to_owned(),
            order_id.to_owned(),
            origin.clone(),
            reason.to_owned(),
        );
        write!(self, move |conn| {
            sqlx::query(update)
                .bind(&partner)
                .bind(&order_id)
                .bind(&reason)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            let _added = insert_set_aside!(&mut *conn, &partner, origin, &order_id, &reason, now);
            Ok(())
        })
    }

    async fn set_aside_record(
        &self,
        partner: &str,
        origin: &RecordOrigin,
        reason: &str,
    ) -> Result<bool, InboxError> {
        let now = self.now_micros();
        let (partner, origin, reason) = (partner.to_owned(), origin.clone(), reason.to_owned());
        write!(self, move |conn| {
            Ok(insert_set_aside!(
                &mut *conn, &partner, origin, "", &reason, now
            ))
        })
    }

    async fn was_set_aside(
        &self,
        partner: &str,
        origin: &RecordOrigin,
    ) -> Result<bool, InboxError> {
        let sql = "SELECT COUNT(*) FROM waybill_inbox_set_aside
                   WHERE partner_id = $1 AND cluster = $2 AND topic = $3 AND kafka_partition = $4
                     AND kafka_offset = $5";
        let count: i64 = on_pool!(self, |pool| sqlx::query_scalar(sql)
            .bind(partner)
            .bind(&origin.cluster)
            .bind(&origin.topic)
            .bind(origin.partition)
            .bind(origin.offset)
            .fetch_one(pool)
            .await?);
        Ok(count > 0)
    }

    async fn order(&self, partner: &str, order_id: &str) -> Result<Option<InboxOrder>, InboxError> {
        let sql = format!(
            "SELECT {ORDER_COLUMNS} FROM waybill_inbox_orders WHERE partner_id = $1 AND order_id = $2"
        );
        let row: Option<OrderRow> = on_pool!(self, |pool| sqlx::query_as(&sql)
            .bind(partner)
            .bind(order_id)
            .fetch_optional(pool)
            .await?);
        row.map(OrderRow::into_order).transpose()
    }

    async fn add_report(&self, partner: &str, report: &StoredReport) -> Result<bool, InboxError> {
        let now = self.now_micros();
        let (partner, report) = (partner.to_owned(), report.clone());
        write!(self, move |conn| Ok(insert_report!(
            &mut *conn, &partner, report, now
        )))
    }

    async fn due_reports(
        &self,
        partner: &str,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<StoredReport>, InboxError> {
        let sql = format!(
            "SELECT {REPORT_COLUMNS} FROM waybill_inbox_reports
             WHERE partner_id = $1 AND state = 'pending' AND next_attempt_at <= $2
             ORDER BY next_attempt_at, created_at LIMIT $3"
        );
        let rows: Vec<ReportRow> = on_pool!(self, |pool| sqlx::query_as(&sql)
            .bind(partner)
            .bind(micros(now))
            .bind(limit)
            .fetch_all(pool)
            .await?);
        rows.into_iter().map(ReportRow::into_report).collect()
    }

    async fn next_report_due(
        &self,
        partner: &str,
        after: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, InboxError> {
        let sql = "SELECT MIN(next_attempt_at) FROM waybill_inbox_reports
                   WHERE partner_id = $1 AND state = 'pending' AND next_attempt_at > $2";
        let next: Option<i64> = on_pool!(self, |pool| sqlx::query_scalar(sql)
            .bind(partner)
            .bind(micros(after))
            .fetch_one(pool)
            .await?);
        next.map(from_micros).transpose()
    }

    async fn report_confirmed(&self, partner: &str, report_id: &str) -> Result<(), InboxError> {
        let sql = "UPDATE waybill_inbox_reports
                   SET state = 'confirmed', attempts = attempts + 1, last_error = '', updated_at = $3
                   WHERE partner_id = $1 AND report_id = $2";
        let (partner, report_id, now) =
            (partner.to_owned(), report_id.to_owned(), self.now_micros());
        write!(self, move |conn| {
            sqlx::query(sql)
                .bind(&partner)
                .bind(&report_id)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    async fn report_failed(
        &self,
        partner: &str,
        report_id: &str,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), InboxError> {
        let sql = "UPDATE waybill_inbox_reports
                   SET attempts = attempts + 1, next_attempt_at = $3, last_error = $4, updated_at = $5
                   WHERE partner_id = $1 AND report_id = $2 AND state = 'pending'";
        let (partner, report_id, error, now) = (
            partner.to_owned(),
            report_id.to_owned(),
            error.to_owned(),
            self.now_micros(),
        );
        write!(self, move |conn| {
            sqlx::query(sql)
                .bind(&partner)
                .bind(&report_id)
                .bind(micros(next_attempt_at))
                .bind(&error)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    async fn report_refused(
        &self,
        partner: &str,
        report_id: &str,
        error: &str,
    ) -> Result<(), InboxError> {
        let sql = "UPDATE waybill_inbox_reports
                   SET state = 'refused', attempts = attempts + 1, last_error = $3, updated_at = $4
                   WHERE partner_id = $1 AND report_id = $2 AND state = 'pending'";
        let (partner, report_id, error, now) = (
            partner.to_owned(),
            report_id.to_owned(),
            error.to_owned(),
            self.now_micros(),
        );
        write!(self, move |conn| {
            sqlx::query(sql)
                .bind(&partner)
                .bind(&report_id)
                .bind(&error)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    async fn reports_of(
        &self,
        partner: &str,
        order_id: &str,
    ) -> Result<Vec<StoredReport>, InboxError> {
        let sql = format!(
            "SELECT {REPORT_COLUMNS} FROM waybill_inbox_reports
             WHERE partner_id = $1 AND order_id = $2 ORDER BY created_at, report_id"
        );
        let rows: Vec<ReportRow> = on_pool!(self, |pool| sqlx::query_as(&sql)
            .bind(partner)
            .bind(order_id)
            .fetch_all(pool)
            .await?);
        rows.into_iter().map(ReportRow::into_report).collect()
    }

    async fn set_aside_rows(
        &self,
        partner: &str,
        limit: i64,
    ) -> Result<Vec<SetAsideRow>, InboxError> {
        let sql =
            "SELECT cluster, topic, kafka_partition, kafka_offset, record_key, order_id, reason
                   FROM waybill_inbox_set_aside WHERE partner_id = $1
                   ORDER BY set_aside_at, kafka_offset LIMIT $2";
        let rows: Vec<SetAsideDbRow> = on_pool!(self, |pool| sqlx::query_as(sql)
            .bind(partner)
            .bind(limit)
            .fetch_all(pool)
            .await?);
        Ok(rows
            .into_iter()
            .map(|row| SetAsideRow {
                origin: RecordOrigin {
                    cluster: row.cluster,
                    topic: row.topic,
                    partition: row.kafka_partition,
                    offset: row.kafka_offset,
                    key: row.record_key,
                },
                order_id: row.order_id,
                reason: row.reason,
            })
            .collect())
    }

    async fn counts(&self, partner: &str) -> Result<InboxCounts, InboxError> {
        let orders =
            "SELECT state, COUNT(*) FROM waybill_inbox_orders WHERE partner_id = $1 GROUP BY state";
        let reports = "SELECT state, COUNT(*) FROM waybill_inbox_reports WHERE partner_id = $1 GROUP BY state";
        let set_aside = "SELECT COUNT(*) FROM waybill_inbox_set_aside WHERE partner_id = $1";
        let (orders, reports, records): (Vec<(String, i64)>, Vec<(String, i64)>, i64) =
            on_pool!(self, |pool| (
                sqlx::query_as(orders).bind(partner).fetch_all(pool).await?,
                sqlx::query_as(reports)
                    .bind(partner)
                    .fetch_all(pool)
                    .await?,
                sqlx::query_scalar(set_aside)
                    .bind(partner)
                    .fetch_one(pool)
                    .await?,
            ));
        let mut counts = InboxCounts {
            records_set_aside: records,
            ..InboxCounts::default()
        };
        for (state, n) in orders {
            match OrderState::parse(&state) {
                Some(OrderState::Started) => counts.started = n,
                Some(OrderState::Accepted) => counts.accepted = n,
                Some(OrderState::Rejected) => counts.rejected = n,
                Some(OrderState::SetAside) => counts.orders_set_aside = n,
                None => {}
            }
        }
        for (state, n) in reports {
            match ReportState::parse(&state) {
                Some(ReportState::Pending) => counts.reports_pending = n,
                Some(ReportState::Confirmed) => counts.reports_confirmed = n,
                Some(ReportState::Refused) => counts.reports_refused = n,
                None => {}
            }
        }
        Ok(counts)
    }

    async fn purge(&self, partner: &str, before: DateTime<Utc>) -> Result<u64, InboxError> {
        // Orders whose reports are all settled; their settled reports go with them.
        let reports = "DELETE FROM waybill_inbox_reports
                       WHERE partner_id = $1 AND state <> 'pending' AND order_id IN (
                         SELECT order_id FROM waybill_inbox_orders
                         WHERE partner_id = $1 AND updated_at < $2 AND state <> 'started')
                         AND NOT EXISTS (SELECT 1 FROM waybill_inbox_reports p
                           WHERE p.partner_id = $1 AND p.order_id = waybill_inbox_reports.order_id
                             AND p.state = 'pending')";
        let orders = "DELETE FROM waybill_inbox_orders
                      WHERE partner_id = $1 AND updated_at < $2 AND state <> 'started'
                        AND NOT EXISTS (SELECT 1 FROM waybill_inbox_reports r
                          WHERE r.partner_id = $1 AND r.order_id = waybill_inbox_orders.order_id)";
        let set_aside =
            "DELETE FROM waybill_inbox_set_aside WHERE partner_id = $1 AND set_aside_at < $2";
        let (partner, before) = (partner.to_owned(), micros(before));
        write!(self, move |conn| {
            sqlx::query(reports)
                .bind(&partner)
                .bind(before)
                .execute(&mut *conn)
                .await?;
            let purged = sqlx::query(orders)
                .bind(&partner)
                .bind(before)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            sqlx::query(set_aside)
                .bind(&partner)
                .bind(before)
                .execute(&mut *conn)
                .await?;
            Ok(purged)
        })
    }
}
