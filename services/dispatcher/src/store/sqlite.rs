//! The SQLite dispatch store (the embedded default). Ids are UUID text, instants INTEGER
//! microseconds. Batches travel as one JSON array read with `json_each`, so each bookkeeping
//! step is still one statement per batch.
//!
//! SQLite has one writer at a time, so leasing is a single guarded `UPDATE … WHERE order_id IN
//! (SELECT … LIMIT n)`: atomic by itself, which is all that several dispatchers on one file need.
//! Every write transaction starts with a write, taking the write lock at once (waiting on the
//! busy timeout) instead of failing on a read-to-write upgrade.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{Row, SqlitePool, sqlite::SqliteRow};
use uuid::Uuid;
use waybill_proto::v1::DispatchState;
use waybill_service_kit::db::{Change, ChangeFeed, from_unix_micros, to_unix_micros};

use super::{
    ACKNOWLEDGING_STATUSES, AuditBatch, AuditCopy, BatchRecord, DispatchStore, EventBatch, Fence,
    LeaseRequest, RecordReport, StoreError, deadline_from_ms, headers_from_json, headers_to_json,
    parse_state, retryable_state_list,
};
use crate::domain::{
    model::{
        AttemptRecord, Backlog, DispatchFilter, DispatchRecord, LeasedOrder, OrderLine,
        PartnerKeyRecord, PartnerRecord, RouteRecord, ShipTo, UnpublishedEvent,
    },
    routing::RoutingTable,
};

const DISPATCH_COLUMNS: &str = "d.order_id, d.state, d.attempts, d.next_attempt_at, d.last_error, \
     d.partner_id, d.route_id, d.lease_owner, d.lease_expires_at, d.sent_at, d.resends, d.ack_due_at, \
     d.created_at, d.updated_at, o.currency_code, o.total_minor";
const PARTNER_COLUMNS: &str =
    "id, display_name, enabled, handover_deadline_ms, resend_budget, topic, created_at, updated_at";
const ROUTE_COLUMNS: &str =
    "id, partner_id, country_code, region, postal_prefix, priority, enabled";
const KEY_COLUMNS: &str = "partner_id, key_id, public_key, created_at, revoked_at";

/// Dispatch state in SQLite.
#[derive(Debug, Clone)]
pub struct SqliteDispatchStore {
    pool: SqlitePool,
    feed: ChangeFeed,
}

impl SqliteDispatchStore {
    /// A store on `pool` (already migrated); commits are announced on `feed` (SQLite has no
    /// `NOTIFY`, and an embedded database has no other process to tell).
    pub fn new(pool: SqlitePool, feed: ChangeFeed) -> Self {
        Self { pool, feed }
    }

    async fn lease(
        &self,
        states: &str,
        due_column: &str,
        lease: &LeaseRequest,
    ) -> Result<Vec<LeasedOrder>, StoreError> {
        let now = to_unix_micros(lease.now);
        let ids: Vec<String> = sqlx::query_scalar(&format!(
            "UPDATE dispatch SET lease_owner = ?1, lease_expires_at = ?2, batch_id = ?3, updated_at = ?4 \
             WHERE order_id IN ( \
                 SELECT order_id FROM dispatch \
                 WHERE state IN ({states}) AND {due_column} <= ?4 \
                   AND (lease_expires_at IS NULL OR lease_expires_at <= ?4) \
                 ORDER BY {due_column} LIMIT ?5) \
             RETURNING order_id"
        ))
        .bind(&lease.owner)
        .bind(to_unix_micros(lease.expires_at))
        .bind(lease.batch_id.to_string())
        .bind(now)
        .bind(i64::from(lease.limit))
        .fetch_all(&self.pool)
        .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let id_list = json!(ids).to_string();
        let rows = sqlx::query(&format!(
            "SELECT d.order_id, d.state, d.attempts, d.resends, d.partner_id, d.traceparent, d.tracestate, \
                    o.placed_at, o.customer_id, o.customer_name, o.customer_email, o.customer_phone, \
                    o.ship_line1, o.ship_line2, o.ship_city, o.ship_region, o.ship_postal_code, \
                    o.ship_country_code, o.currency_code, o.total_minor, o.region, \
                    EXISTS (SELECT 1 FROM order_status_events e WHERE e.order_id = d.order_id \
                            AND e.partner_id = d.partner_id \
                            AND e.status IN ({ACKNOWLEDGING_STATUSES})) AS acknowledged, \
                    (SELECT group_concat(r.partner_id, ',') FROM dispatch_rejections r \
                     WHERE r.order_id = d.order_id) AS rejected_partners \
             FROM dispatch d JOIN orders o ON o.id = d.order_id \
             WHERE d.order_id IN (SELECT value FROM json_each(?1)) AND d.batch_id = ?2"
        ))
        .bind(&id_list)
        .bind(lease.batch_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        let mut orders = rows
            .iter()
            .map(leased_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let mut lines: HashMap<Uuid, Vec<OrderLine>> = HashMap::new();
        let line_rows = sqlx::query(
            "SELECT order_id, sku, name, quantity, unit_price_minor, line_total_minor FROM order_lines \
             WHERE order_id IN (SELECT value FROM json_each(?1)) ORDER BY order_id, line_no",
        )
        .bind(&id_list)
        .fetch_all(&self.pool)
        .await?;
        for row in line_rows {
            let quantity: i64 = row.try_get("quantity")?;
            lines
                .entry(parse_id(row.try_get("order_id")?)?)
                .or_default()
                .push(OrderLine {
                    sku: row.try_get("sku")?,
                    name: row.try_get("name")?,
                    quantity: u32::try_from(quantity)
                        .map_err(|_| StoreError::Corrupt(format!("bad quantity {quantity}")))?,
                    unit_price_minor: row.try_get("unit_price_minor")?,
                    line_total_minor: row.try_get("line_total_minor")?,
                });
        }
        for order in &mut orders {
            order.lines = lines.remove(&order.order_id).unwrap_or_default();
        }
        Ok(orders)
    }
}

fn micros(at: Option<DateTime<Utc>>) -> Option<i64> {
    at.map(to_unix_micros)
}

#[async_trait]
impl DispatchStore for SqliteDispatchStore {
    async fn lease_due(&self, lease: &LeaseRequest) -> Result<Vec<LeasedOrder>, StoreError> {
        self.lease("'PENDING', 'RETRYING'", "next_attempt_at", lease)
            .await
    }

    async fn lease_overdue(&self, lease: &LeaseRequest) -> Result<Vec<LeasedOrder>, StoreError> {
        self.lease("'SENT'", "ack_due_at", lease).await
    }

    async fn record(
        &self,
        fence: &Fence,
        batch: &BatchRecord,
        now: DateTime<Utc>,
    ) -> Result<RecordReport, StoreError> {
        let now_micros = to_unix_micros(now);
        let updates = json!(
            batch
                .updates
                .iter()
                .map(|u| json!({
                    "id": u.order_id.to_string(),
                    "state": u.state.short_name(),
                    "attempts": u.attempts,
                    "next": to_unix_micros(u.next_attempt_at),
                    "error": u.last_error,
                    "partner": u.partner_id,
                    "route": u.route_id,
                    "resends": u.resends,
                    "sent": micros(u.sent_at),
                    "due": micros(u.ack_due_at),
                }))
                .collect::<Vec<_>>()
        )
        .to_string();
        let mut tx = self.pool.begin().await?;
        let applied: Vec<String> = sqlx::query_scalar(
            "UPDATE dispatch SET state = i.state, attempts = i.attempts, next_attempt_at = i.next, \
                 last_error = NULLIF(COALESCE(i.error, dispatch.last_error), ''), \
                 partner_id = COALESCE(i.partner, dispatch.partner_id), route_id = COALESCE(i.route, dispatch.route_id), \
                 resends = i.resends, sent_at = COALESCE(i.sent, dispatch.sent_at), ack_due_at = i.due, \
                 lease_owner = NULL, lease_expires_at = NULL, batch_id = NULL, updated_at = ?3 \
             FROM (SELECT value ->> '$.id' AS id, value ->> '$.state' AS state, value ->> '$.attempts' AS attempts, \
                          value ->> '$.next' AS next, value ->> '$.error' AS error, value ->> '$.partner' AS partner, \
                          value ->> '$.route' AS route, value ->> '$.resends' AS resends, value ->> '$.sent' AS sent, \
                          value ->> '$.due' AS due \
                   FROM json_each(?4)) AS i \
             WHERE dispatch.order_id = i.id AND dispatch.lease_owner = ?1 AND dispatch.batch_id = ?2 \
             RETURNING dispatch.order_id",
        )
        .bind(&fence.owner)
        .bind(fence.batch_id.to_string())
        .bind(now_micros)
        .bind(&updates)
        .fetch_all(&mut *tx)
        .await?;
        let applied = applied
            .iter()
            .map(|id| parse_id(id))
            .collect::<Result<Vec<_>, _>>()?;
        let applied_set: HashSet<Uuid> = applied.iter().copied().collect();

        let first_sends: Vec<serde_json::Value> = batch
            .first_sends
            .iter()
            .filter(|(id, _)| applied_set.contains(id))
            .map(|(id, partner)| json!({ "id": id.to_string(), "partner": partner }))
            .collect();
        let mut events_appended = Vec::new();
        if !first_sends.is_empty() {
            let first_sends = json!(first_sends).to_string();
            // Events first (reading the seq before the bump), then the bump; the write lock is
            // already ours, so nothing can come between them.
            let appended: Vec<String> = sqlx::query_scalar(
                "INSERT INTO order_status_events (order_id, seq, status, partner_id, occurred_at, recorded_at) \
                 SELECT o.id, o.status_seq + 1, 'SENT_TO_PARTNER', i.partner, ?2, ?2 \
                 FROM orders o JOIN (SELECT value ->> '$.id' AS id, value ->> '$.partner' AS partner \
                                     FROM json_each(?1)) AS i ON o.id = i.id \
                 WHERE o.status IN ('PLACED', 'REJECTED_BY_PARTNER') \
                 RETURNING order_id",
            )
            .bind(&first_sends)
            .bind(now_micros)
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE orders SET partner_id = i.partner, \
                     status_seq = CASE WHEN orders.status IN ('PLACED', 'REJECTED_BY_PARTNER') THEN orders.status_seq + 1 ELSE orders.status_seq END, \
                     status = CASE WHEN orders.status IN ('PLACED', 'REJECTED_BY_PARTNER') THEN 'SENT_TO_PARTNER' ELSE orders.status END \
                 FROM (SELECT value ->> '$.id' AS id, value ->> '$.partner' AS partner FROM json_each(?1)) AS i \
                 WHERE orders.id = i.id",
            )
            .bind(&first_sends)
            .execute(&mut *tx)
            .await?;
            events_appended = appended
                .iter()
                .map(|id| parse_id(id))
                .collect::<Result<Vec<_>, _>>()?;
        }

        let attempts: Vec<serde_json::Value> = batch
            .attempts
            .iter()
            .filter(|a| applied_set.contains(&a.order_id))
            .map(|a| {
                json!({
                    "id": a.order_id.to_string(), "attempt": a.attempt, "error": a.error,
                    "partner": a.partner_id, "topic": a.topic,
                })
            })
            .collect();
        if !attempts.is_empty() {
            sqlx::query(
                "INSERT INTO dispatch_attempts (order_id, attempt, at, error, partner_id, topic, lease_owner, batch_id) \
                 SELECT value ->> '$.id', value ->> '$.attempt', ?1, value ->> '$.error', value ->> '$.partner', \
                        value ->> '$.topic', ?2, ?3 \
                 FROM json_each(?4)",
            )
            .bind(now_micros)
            .bind(&fence.owner)
            .bind(fence.batch_id.to_string())
            .bind(json!(attempts).to_string())
            .execute(&mut *tx)
            .await?;
        }
        // Rare (the audit topic failed while the partner's took the order): one row each.
        for copy in batch
            .audit_copies
            .iter()
            .filter(|c| applied_set.contains(&c.order_id))
        {
            sqlx::query(
                "INSERT INTO audit_outbox \
                     (order_id, topic, payload, headers, attempts, last_error, due_at, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (order_id) DO UPDATE SET topic = excluded.topic, \
                     payload = excluded.payload, headers = excluded.headers, \
                     attempts = excluded.attempts, last_error = excluded.last_error, \
                     due_at = excluded.due_at",
            )
            .bind(copy.order_id.to_string())
            .bind(&copy.topic)
            .bind(&copy.payload)
            .bind(headers_to_json(&copy.headers))
            .bind(copy.attempts)
            .bind(&copy.last_error)
            .bind(to_unix_micros(copy.due_at))
            .bind(now_micros)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        for order_id in &events_appended {
            self.feed.publish(Change::OrderStatus(*order_id));
        }
        let fenced = batch
            .updates
            .iter()
            .map(|u| u.order_id)
            .filter(|id| !applied_set.contains(id))
            .collect();
        Ok(RecordReport {
            applied,
            fenced,
            events_appended,
        })
    }

    async fn release_leases(&self, owner: &str, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE dispatch SET lease_owner = NULL, lease_expires_at = NULL, batch_id = NULL, updated_at = ?2 \
             WHERE lease_owner = ?1",
        )
        .bind(owner)
        .bind(to_unix_micros(now))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    async fn claim_events(&self, limit: u32) -> Result<Box<dyn EventBatch>, StoreError> {
        // No row locks in SQLite; holding the write lock across a produce would stall every
        // writer. With one dispatcher per SQLite file (the embedded shape) nobody competes.
        let rows = sqlx::query(
            "SELECT e.order_id, e.seq, e.status, e.partner_id, e.detail, e.tracking_id, e.occurred_at, \
                    e.recorded_at, o.customer_id, o.customer_email, o.region \
             FROM order_status_events e JOIN orders o ON o.id = e.order_id \
             WHERE e.published_at IS NULL \
             ORDER BY e.recorded_at, e.order_id, e.seq LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let events = rows
            .iter()
            .map(|row| {
                Ok(UnpublishedEvent {
                    order_id: parse_id(row.try_get("order_id")?)?,
                    seq: row.try_get("seq")?,
                    status: row.try_get("status")?,
                    partner_id: row.try_get("partner_id")?,
                    detail: row.try_get("detail")?,
                    tracking_id: row.try_get("tracking_id")?,
                    occurred_at: from_unix_micros(row.try_get("occurred_at")?),
                    recorded_at: from_unix_micros(row.try_get("recorded_at")?),
                    customer_id: row.try_get("customer_id")?,
                    customer_email: row.try_get("customer_email")?,
                    region: row.try_get("region")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Box::new(SqliteEventBatch {
            pool: self.pool.clone(),
            events,
        }))
    }

    async fn claim_audits(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Box<dyn AuditBatch>, StoreError> {
        // As with events: no row locks in SQLite, and one dispatcher per file.
        let rows = sqlx::query(
            "SELECT order_id, topic, payload, headers, attempts, last_error, due_at \
             FROM audit_outbox WHERE due_at <= ?1 ORDER BY due_at LIMIT ?2",
        )
        .bind(to_unix_micros(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let copies = rows
            .iter()
            .map(|row| {
                Ok(AuditCopy {
                    order_id: parse_id(row.try_get("order_id")?)?,
                    topic: row.try_get("topic")?,
                    payload: row.try_get("payload")?,
                    headers: headers_from_json(row.try_get("headers")?)?,
                    attempts: row.try_get("attempts")?,
                    last_error: row.try_get("last_error")?,
                    due_at: from_unix_micros(row.try_get("due_at")?),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Box::new(SqliteAuditBatch {
            pool: self.pool.clone(),
            copies,
        }))
    }

    async fn backlog(&self, now: DateTime<Utc>) -> Result<Backlog, StoreError> {
        let rows = sqlx::query(
            "SELECT state, count(*) AS rows FROM dispatch GROUP BY state ORDER BY state",
        )
        .fetch_all(&self.pool)
        .await?;
        let by_state = rows
            .iter()
            .map(|row| {
                Ok((
                    parse_state(row.try_get("state")?)?,
                    row.try_get::<i64, _>("rows")?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let oldest: Option<i64> = sqlx::query_scalar(
            "SELECT min(next_attempt_at) FROM dispatch WHERE state IN ('PENDING', 'RETRYING') AND next_attempt_at <= ?1",
        )
        .bind(to_unix_micros(now))
        .fetch_one(&self.pool)
        .await?;
        let audit_pending: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_outbox")
            .fetch_one(&self.pool)
            .await?;
        Ok(Backlog {
            by_state,
            oldest_due_at: oldest.map(from_unix_micros),
            audit_pending,
        })
    }

    async fn routing_table(&self) -> Result<RoutingTable, StoreError> {
        Ok(RoutingTable::new(
            self.list_partners().await?,
            self.list_routes().await?,
        ))
    }

    async fn list_partners(&self) -> Result<Vec<PartnerRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {PARTNER_COLUMNS} FROM partners ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(partner_from_row)
        .collect()
    }

    async fn upsert_partner(&self, partner: &PartnerRecord) -> Result<PartnerRecord, StoreError> {
        let row = sqlx::query(&format!(
            "INSERT INTO partners ({PARTNER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) \
             ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name, enabled = excluded.enabled, \
                 handover_deadline_ms = excluded.handover_deadline_ms, resend_budget = excluded.resend_budget, \
                 topic = excluded.topic, updated_at = excluded.updated_at \
             RETURNING {PARTNER_COLUMNS}"
        ))
        .bind(&partner.id)
        .bind(&partner.display_name)
        .bind(partner.enabled)
        .bind(partner.handover_deadline.num_milliseconds())
        .bind(partner.resend_budget)
        .bind(&partner.topic)
        .bind(to_unix_micros(partner.updated_at))
        .fetch_one(&self.pool)
        .await?;
        partner_from_row(&row)
    }

    async fn disable_partner(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PartnerRecord>, StoreError> {
        sqlx::query(&format!(
            "UPDATE partners SET enabled = 0, updated_at = ?2 WHERE id = ?1 RETURNING {PARTNER_COLUMNS}"
        ))
        .bind(id)
        .bind(to_unix_micros(now))
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(partner_from_row)
        .transpose()
    }

    async fn add_key(&self, key: &PartnerKeyRecord) -> Result<PartnerKeyRecord, StoreError> {
        let row = sqlx::query(&format!(
            "INSERT INTO partner_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, NULL) RETURNING {KEY_COLUMNS}"
        ))
        .bind(&key.partner_id)
        .bind(&key.key_id)
        .bind(&key.public_key)
        .bind(to_unix_micros(key.created_at))
        .fetch_one(&self.pool)
        .await?;
        key_from_row(&row)
    }

    async fn revoke_key(
        &self,
        partner_id: &str,
        key_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PartnerKeyRecord>, StoreError> {
        sqlx::query(&format!(
            "UPDATE partner_keys SET revoked_at = COALESCE(revoked_at, ?3) \
             WHERE partner_id = ?1 AND key_id = ?2 RETURNING {KEY_COLUMNS}"
        ))
        .bind(partner_id)
        .bind(key_id)
        .bind(to_unix_micros(now))
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(key_from_row)
        .transpose()
    }

    async fn list_keys(&self, partner_id: &str) -> Result<Vec<PartnerKeyRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM partner_keys WHERE partner_id = ?1 ORDER BY key_id"
        ))
        .bind(partner_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(key_from_row)
        .collect()
    }

    async fn list_routes(&self) -> Result<Vec<RouteRecord>, StoreError> {
        sqlx::query(&format!("SELECT {ROUTE_COLUMNS} FROM routes ORDER BY id"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(route_from_row)
            .collect()
    }

    async fn set_route(
        &self,
        route: &RouteRecord,
        now: DateTime<Utc>,
    ) -> Result<RouteRecord, StoreError> {
        let row = sqlx::query(&format!(
            "INSERT INTO routes ({ROUTE_COLUMNS}, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) \
             ON CONFLICT (id) DO UPDATE SET partner_id = excluded.partner_id, country_code = excluded.country_code, \
                 region = excluded.region, postal_prefix = excluded.postal_prefix, priority = excluded.priority, \
                 enabled = excluded.enabled, updated_at = excluded.updated_at \
             RETURNING {ROUTE_COLUMNS}"
        ))
        .bind(&route.id)
        .bind(&route.partner_id)
        .bind(&route.country_code)
        .bind(&route.region)
        .bind(&route.postal_prefix)
        .bind(route.priority)
        .bind(route.enabled)
        .bind(to_unix_micros(now))
        .fetch_one(&self.pool)
        .await?;
        route_from_row(&row)
    }

    async fn delete_route(&self, id: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM routes WHERE id = ?1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn order_destination(&self, order_id: Uuid) -> Result<Option<ShipTo>, StoreError> {
        sqlx::query(
            "SELECT ship_line1, ship_line2, ship_city, ship_region, ship_postal_code, ship_country_code \
             FROM orders WHERE id = ?1",
        )
        .bind(order_id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(ship_to_from_row)
        .transpose()
    }

    async fn list_dispatches(
        &self,
        filter: &DispatchFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<DispatchRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {DISPATCH_COLUMNS} FROM dispatch d JOIN orders o ON o.id = d.order_id \
             WHERE (?1 IS NULL OR d.state = ?1) AND (?2 IS NULL OR d.partner_id = ?2) \
               AND (?3 IS NULL OR d.order_id > ?3) \
             ORDER BY d.order_id LIMIT ?4"
        ))
        .bind(filter.state.map(DispatchState::short_name))
        .bind(filter.partner_id.as_deref())
        .bind(after.map(|id| id.to_string()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(dispatch_from_row)
        .collect()
    }

    async fn get_dispatch(
        &self,
        order_id: Uuid,
    ) -> Result<Option<(DispatchRecord, Vec<AttemptRecord>)>, StoreError> {
        let Some(row) = sqlx::query(&format!(
            "SELECT {DISPATCH_COLUMNS} FROM dispatch d JOIN orders o ON o.id = d.order_id WHERE d.order_id = ?1"
        ))
        .bind(order_id.to_string())
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let attempts = sqlx::query(
            "SELECT attempt, at, error, partner_id, topic FROM dispatch_attempts \
             WHERE order_id = ?1 ORDER BY id DESC LIMIT 100",
        )
        .bind(order_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(AttemptRecord {
                attempt: row.try_get("attempt")?,
                at: from_unix_micros(row.try_get("at")?),
                error: row.try_get("error")?,
                partner_id: row.try_get("partner_id")?,
                topic: row.try_get("topic")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Some((dispatch_from_row(&row)?, attempts)))
    }

    async fn retry(
        &self,
        ids: &[Uuid],
        filter: &DispatchFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let ids = json!(ids.iter().map(Uuid::to_string).collect::<Vec<_>>()).to_string();
        let retried: Vec<String> = sqlx::query_scalar(&format!(
            "UPDATE dispatch SET state = 'PENDING', attempts = 0, resends = 0, next_attempt_at = ?1, \
                 ack_due_at = NULL, updated_at = ?1 \
             WHERE state IN ({states}) AND (lease_expires_at IS NULL OR lease_expires_at <= ?1) \
               AND CASE WHEN json_array_length(?2) > 0 THEN order_id IN (SELECT value FROM json_each(?2)) \
                        ELSE (?3 IS NULL OR state = ?3) AND (?4 IS NULL OR partner_id = ?4) END \
             RETURNING order_id",
            states = retryable_state_list()
        ))
        .bind(to_unix_micros(now))
        .bind(&ids)
        .bind(filter.state.map(DispatchState::short_name))
        .bind(filter.partner_id.as_deref())
        .fetch_all(&self.pool)
        .await?;
        let mut retried = retried
            .iter()
            .map(|id| parse_id(id))
            .collect::<Result<Vec<_>, _>>()?;
        retried.sort();
        if !retried.is_empty() {
            self.feed.publish(Change::Outbox);
        }
        Ok(retried)
    }
}

struct SqliteEventBatch {
    pool: SqlitePool,
    events: Vec<UnpublishedEvent>,
}

#[async_trait]
impl EventBatch for SqliteEventBatch {
    fn events(&self) -> &[UnpublishedEvent] {
        &self.events
    }

    async fn mark_published(self: Box<Self>, now: DateTime<Utc>) -> Result<(), StoreError> {
        if self.events.is_empty() {
            return Ok(());
        }
        let keys = json!(
            self.events
                .iter()
                .map(|e| json!({ "id": e.order_id.to_string(), "seq": e.seq }))
                .collect::<Vec<_>>()
        )
        .to_string();
        sqlx::query(
            "UPDATE order_status_events SET published_at = ?1 \
             FROM (SELECT value ->> '$.id' AS id, value ->> '$.seq' AS seq FROM json_each(?2)) AS k \
             WHERE order_status_events.order_id = k.id AND order_status_events.seq = k.seq",
        )
        .bind(to_unix_micros(now))
        .bind(keys)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

struct SqliteAuditBatch {
    pool: SqlitePool,
    copies: Vec<AuditCopy>,
}

#[async_trait]
impl AuditBatch for SqliteAuditBatch {
    fn copies(&self) -> &[AuditCopy] {
        &self.copies
    }

    async fn settle(
        self: Box<Self>,
        delivered: &[Uuid],
        failed: &[AuditCopy],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if !delivered.is_empty() {
            let ids: Vec<String> = delivered.iter().map(Uuid::to_string).collect();
            sqlx::query(
                "DELETE FROM audit_outbox WHERE order_id IN (SELECT value FROM json_each(?1))",
            )
            .bind(json!(ids).to_string())
            .execute(&mut *tx)
            .await?;
        }
        if !failed.is_empty() {
            let rows = json!(
                failed
                    .iter()
                    .map(|c| json!({
                        "id": c.order_id.to_string(), "attempts": c.attempts,
                        "error": c.last_error, "due": to_unix_micros(c.due_at),
                    }))
                    .collect::<Vec<_>>()
            )
            .to_string();
            sqlx::query(
                "UPDATE audit_outbox SET attempts = f.attempts, last_error = f.error, due_at = f.due \
                 FROM (SELECT value ->> '$.id' AS id, value ->> '$.attempts' AS attempts, \
                              value ->> '$.error' AS error, value ->> '$.due' AS due \
                       FROM json_each(?1)) AS f \
                 WHERE audit_outbox.order_id = f.id",
            )
            .bind(rows)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn parse_id(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|_| StoreError::Corrupt(format!("bad uuid {text:?}")))
}

fn opt_micros(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(row.try_get::<Option<i64>, _>(column)?.map(from_unix_micros))
}

fn leased_from_row(row: &SqliteRow) -> Result<LeasedOrder, StoreError> {
    Ok(LeasedOrder {
        order_id: parse_id(row.try_get("order_id")?)?,
        state: parse_state(row.try_get("state")?)?,
        attempts: row.try_get("attempts")?,
        resends: row.try_get("resends")?,
        partner_id: row.try_get("partner_id")?,
        acknowledged: row.try_get("acknowledged")?,
        // Partner ids have no ',' (lower-case letters, digits, '-').
        rejected_partners: row
            .try_get::<Option<String>, _>("rejected_partners")?
            .map(|list| list.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
        traceparent: row.try_get("traceparent")?,
        tracestate: row.try_get("tracestate")?,
        placed_at: from_unix_micros(row.try_get("placed_at")?),
        customer_id: row.try_get("customer_id")?,
        customer_name: row.try_get("customer_name")?,
        customer_email: row.try_get("customer_email")?,
        customer_phone: row.try_get("customer_phone")?,
        ship_to: ship_to_from_row(row)?,
        currency_code: row.try_get("currency_code")?,
        total_minor: row.try_get("total_minor")?,
        region: row.try_get("region")?,
        lines: Vec::new(),
    })
}

fn ship_to_from_row(row: &SqliteRow) -> Result<ShipTo, StoreError> {
    Ok(ShipTo {
        line1: row.try_get("ship_line1")?,
        line2: row.try_get("ship_line2")?,
        city: row.try_get("ship_city")?,
        region: row.try_get("ship_region")?,
        postal_code: row.try_get("ship_postal_code")?,
        country_code: row.try_get("ship_country_code")?,
    })
}

fn partner_from_row(row: &SqliteRow) -> Result<PartnerRecord, StoreError> {
    Ok(PartnerRecord {
        id: row.try_get("id")?,
        display_name: row.try_get("display_name")?,
        enabled: row.try_get("enabled")?,
        handover_deadline: deadline_from_ms(row.try_get("handover_deadline_ms")?),
        resend_budget: row.try_get("resend_budget")?,
        topic: row.try_get("topic")?,
        created_at: from_unix_micros(row.try_get("created_at")?),
        updated_at: from_unix_micros(row.try_get("updated_at")?),
    })
}

fn route_from_row(row: &SqliteRow) -> Result<RouteRecord, StoreError> {
    Ok(RouteRecord {
        id: row.try_get("id")?,
        partner_id: row.try_get("partner_id")?,
        country_code: row.try_get("country_code")?,
        region: row.try_get("region")?,
        postal_prefix: row.try_get("postal_prefix")?,
        priority: row.try_get("priority")?,
        enabled: row.try_get("enabled")?,
    })
}

fn key_from_row(row: &SqliteRow) -> Result<PartnerKeyRecord, StoreError> {
    Ok(PartnerKeyRecord {
        partner_id: row.try_get("partner_id")?,
        key_id: row.try_get("key_id")?,
        public_key: row.try_get("public_key")?,
        created_at: from_unix_micros(row.try_get("created_at")?),
        revoked_at: opt_micros(row, "revoked_at")?,
    })
}

fn dispatch_from_row(row: &SqliteRow) -> Result<DispatchRecord, StoreError> {
    Ok(DispatchRecord {
        order_id: parse_id(row.try_get("order_id")?)?,
        state: parse_state(row.try_get("state")?)?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: from_unix_micros(row.try_get("next_attempt_at")?),
        last_error: row.try_get("last_error")?,
        partner_id: row.try_get("partner_id")?,
        route_id: row.try_get("route_id")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at: opt_micros(row, "lease_expires_at")?,
        sent_at: opt_micros(row, "sent_at")?,
        resends: row.try_get("resends")?,
        ack_due_at: opt_micros(row, "ack_due_at")?,
        created_at: from_unix_micros(row.try_get("created_at")?),
        updated_at: from_unix_micros(row.try_get("updated_at")?),
        currency_code: row.try_get("currency_code")?,
        total_minor: row.try_get("total_minor")?,
    })
}
