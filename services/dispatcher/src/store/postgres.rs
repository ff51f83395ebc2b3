//! The Postgres dispatch store (production). Batches travel as arrays (`UNNEST`), so every
//! bookkeeping step is one statement whatever the batch size; leasing uses
//! `FOR UPDATE SKIP LOCKED` so any number of dispatchers share the outbox.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction, postgres::PgRow};
use uuid::Uuid;
use waybill_proto::v1::DispatchState;

use super::{
    AuditBatch, AuditCopy, BatchRecord, DispatchStore, EventBatch, Fence, LeaseRequest,
    RecordReport, RowUpdate, StoreError, deadline_from_ms, headers_from_json, headers_to_json,
    parse_state, retryable_state_list,
};
use crate::domain::{
    model::{
        AttemptRecord, Backlog, DispatchFilter, DispatchRecord, LeasedOrder, OrderLine,
        PartnerKeyRecord, PartnerRecord, RouteRecord, ShipTo, UnpublishedEvent,
    },
    routing::RoutingTable,
};

const LEASE_DUE: &str = include_str!("lease_due.pg.sql");
const LEASE_OVERDUE: &str = include_str!("lease_overdue.pg.sql");
const RECORD_UPDATES: &str = include_str!("record_updates.pg.sql");
const RECORD_FIRST_SENDS: &str = include_str!("record_first_sends.pg.sql");
const SAVE_AUDIT_COPY: &str = "INSERT INTO audit_outbox \
     (order_id, topic, payload, headers, attempts, last_error, due_at, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (order_id) DO UPDATE SET topic = EXCLUDED.topic, payload = EXCLUDED.payload, \
         headers = EXCLUDED.headers, attempts = EXCLUDED.attempts, \
         last_error = EXCLUDED.last_error, due_at = EXCLUDED.due_at";

const DISPATCH_COLUMNS: &str = "d.order_id, d.state, d.attempts, d.next_attempt_at, d.last_error, \
     d.partner_id, d.route_id, d.lease_owner, d.lease_expires_at, d.sent_at, d.resends, d.ack_due_at, \
     d.created_at, d.updated_at, o.currency_code, o.total_minor";
const PARTNER_COLUMNS: &str =
    "id, display_name, enabled, handover_deadline_ms, resend_budget, topic, created_at, updated_at";
const ROUTE_COLUMNS: &str =
    "id, partner_id, country_code, region, postal_prefix, priority, enabled";
const KEY_COLUMNS: &str = "partner_id, key_id, public_key, created_at, revoked_at";

/// Dispatch state in Postgres.
#[derive(Debug, Clone)]
pub struct PgDispatchStore {
    pool: PgPool,
}

impl PgDispatchStore {
    /// A store on `pool` (already migrated).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn lease(&self, sql: &str, lease: &LeaseRequest) -> Result<Vec<LeasedOrder>, StoreError> {
        let rows = sqlx::query(sql)
            .bind(lease.now)
            .bind(i64::from(lease.limit))
            .bind(&lease.owner)
            .bind(lease.expires_at)
            .bind(lease.batch_id)
            .fetch_all(&self.pool)
            .await?;
        let mut orders = rows
            .iter()
            .map(leased_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if orders.is_empty() {
            return Ok(orders);
        }
        let ids: Vec<Uuid> = orders.iter().map(|order| order.order_id).collect();
        let mut lines: HashMap<Uuid, Vec<OrderLine>> = HashMap::new();
        let line_rows = sqlx::query(
            "SELECT order_id, sku, name, quantity, unit_price_minor, line_total_minor \
             FROM order_lines WHERE order_id = ANY($1) ORDER BY order_id, line_no",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        for row in line_rows {
            let quantity: i32 = row.try_get("quantity")?;
            lines
                .entry(row.try_get("order_id")?)
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

#[async_trait]
impl DispatchStore for PgDispatchStore {
    async fn lease_due(&self, lease: &LeaseRequest) -> Result<Vec<LeasedOrder>, StoreError> {
        self.lease(LEASE_DUE, lease).await
    }

    async fn lease_overdue(&self, lease: &LeaseRequest) -> Result<Vec<LeasedOrder>, StoreError> {
        self.lease(LEASE_OVERDUE, lease).await
    }

    async fn record(
        &self,
        fence: &Fence,
        batch: &BatchRecord,
        now: DateTime<Utc>,
    ) -> Result<RecordReport, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The fence: which of these rows does this batch still hold? Locking them by primary
        // key keeps them ours until commit, so the update below needs no lease filter.
        let ids: Vec<Uuid> = batch.updates.iter().map(|u| u.order_id).collect();
        let applied: Vec<Uuid> = sqlx::query_scalar(
            "SELECT order_id FROM dispatch \
             WHERE order_id = ANY($1) AND lease_owner = $2 AND batch_id = $3 \
             ORDER BY order_id \
             FOR UPDATE",
        )
        .bind(&ids)
        .bind(&fence.owner)
        .bind(fence.batch_id)
        .fetch_all(&mut *tx)
        .await?;
        let applied_set: HashSet<Uuid> = applied.iter().copied().collect();
        let updates: Vec<&RowUpdate> = batch
            .updates
            .iter()
            .filter(|u| applied_set.contains(&u.order_id))
            .collect();
        if !updates.is_empty() {
            sqlx::query(RECORD_UPDATES)
                .bind(now)
                .bind(updates.iter().map(|u| u.order_id).collect::<Vec<_>>())
                .bind(
                    updates
                        .iter()
                        .map(|u| u.state.short_name())
                        .collect::<Vec<_>>(),
                )
                .bind(updates.iter().map(|u| u.attempts).collect::<Vec<_>>())
                .bind(
                    updates
                        .iter()
                        .map(|u| u.next_attempt_at)
                        .collect::<Vec<_>>(),
                )
                .bind(
                    updates
                        .iter()
                        .map(|u| u.last_error.clone())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    updates
                        .iter()
                        .map(|u| u.partner_id.clone())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    updates
                        .iter()
                        .map(|u| u.route_id.clone())
                        .collect::<Vec<_>>(),
                )
                .bind(updates.iter().map(|u| u.resends).collect::<Vec<_>>())
                .bind(updates.iter().map(|u| u.sent_at).collect::<Vec<_>>())
                .bind(updates.iter().map(|u| u.ack_due_at).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
        }

        let first_sends: Vec<&(Uuid, String)> = batch
            .first_sends
            .iter()
            .filter(|(id, _)| applied_set.contains(id))
            .collect();
        let events_appended: Vec<Uuid> = if first_sends.is_empty() {
            Vec::new()
        } else {
            sqlx::query_scalar(RECORD_FIRST_SENDS)
                .bind(first_sends.iter().map(|(id, _)| *id).collect::<Vec<_>>())
                .bind(
                    first_sends
                        .iter()
                        .map(|(_, partner)| partner.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(now)
                .fetch_all(&mut *tx)
                .await?
        };

        let attempts: Vec<_> = batch
            .attempts
            .iter()
            .filter(|a| applied_set.contains(&a.order_id))
            .collect();
        if !attempts.is_empty() {
            sqlx::query(
                "INSERT INTO dispatch_attempts (order_id, attempt, at, error, partner_id, topic, lease_owner, batch_id) \
                 SELECT i.order_id, i.attempt, $1, i.error, i.partner_id, i.topic, $2, $3 \
                 FROM UNNEST($4::uuid[], $5::int[], $6::text[], $7::text[], $8::text[]) \
                     AS i (order_id, attempt, error, partner_id, topic)",
            )
            .bind(now)
            .bind(&fence.owner)
            .bind(fence.batch_id)
            .bind(attempts.iter().map(|a| a.order_id).collect::<Vec<_>>())
            .bind(attempts.iter().map(|a| a.attempt).collect::<Vec<_>>())
            .bind(attempts.iter().map(|a| a.error.as_str()).collect::<Vec<_>>())
            .bind(attempts.iter().map(|a| a.partner_id.as_str()).collect::<Vec<_>>())
            .bind(attempts.iter().map(|a| a.topic.as_str()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        // Rare (the audit topic failed while the partner's took the order): one row each.
        for copy in batch
            .audit_copies
            .iter()
            .filter(|c| applied_set.contains(&c.order_id))
        {
            sqlx::query(SAVE_AUDIT_COPY)
                .bind(copy.order_id)
                .bind(&copy.topic)
                .bind(&copy.payload)
                .bind(headers_to_json(&copy.headers))
                .bind(copy.attempts)
                .bind(&copy.last_error)
                .bind(copy.due_at)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
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
            "UPDATE dispatch SET lease_owner = NULL, lease_expires_at = NULL, batch_id = NULL, updated_at = $2 \
             WHERE lease_owner = $1",
        )
        .bind(owner)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    async fn claim_events(&self, limit: u32) -> Result<Box<dyn EventBatch>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Row locks held until `mark_published` commits (or the batch is dropped and rolls
        // back): another dispatcher skips these events instead of publishing them twice.
        let rows = sqlx::query(
            "SELECT e.order_id, e.seq, e.status, e.partner_id, e.detail, e.tracking_id, e.occurred_at, \
                    e.recorded_at, o.customer_id, o.customer_email, o.region \
             FROM order_status_events e JOIN orders o ON o.id = e.order_id \
             WHERE e.published_at IS NULL \
             ORDER BY e.recorded_at, e.order_id, e.seq \
             LIMIT $1 \
             FOR UPDATE OF e SKIP LOCKED",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let events = rows
            .iter()
            .map(|row| {
                Ok(UnpublishedEvent {
                    order_id: row.try_get("order_id")?,
                    seq: row.try_get("seq")?,
                    status: row.try_get("status")?,
                    partner_id: row.try_get("partner_id")?,
                    detail: row.try_get("detail")?,
                    tracking_id: row.try_get("tracking_id")?,
                    occurred_at: row.try_get("occurred_at")?,
                    recorded_at: row.try_get("recorded_at")?,
                    customer_id: row.try_get("customer_id")?,
                    customer_email: row.try_get("customer_email")?,
                    region: row.try_get("region")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Box::new(PgEventBatch { tx, events }))
    }

    async fn claim_audits(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Box<dyn AuditBatch>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Row locks held until `settle` commits: another dispatcher skips these copies.
        let rows = sqlx::query(
            "SELECT order_id, topic, payload, headers, attempts, last_error, due_at \
             FROM audit_outbox WHERE due_at <= $1 ORDER BY due_at LIMIT $2 \
             FOR UPDATE SKIP LOCKED",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let copies = rows
            .iter()
            .map(|row| {
                Ok(AuditCopy {
                    order_id: row.try_get("order_id")?,
                    topic: row.try_get("topic")?,
                    payload: row.try_get("payload")?,
                    headers: headers_from_json(row.try_get("headers")?)?,
                    attempts: row.try_get("attempts")?,
                    last_error: row.try_get("last_error")?,
                    due_at: row.try_get("due_at")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Box::new(PgAuditBatch { tx, copies }))
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
        let oldest_due_at: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT min(next_attempt_at) FROM dispatch \
             WHERE state IN ('PENDING', 'RETRYING') AND next_attempt_at <= $1",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        let audit_pending: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_outbox")
            .fetch_one(&self.pool)
            .await?;
        Ok(Backlog {
            by_state,
            oldest_due_at,
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
            "INSERT INTO partners ({PARTNER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             ON CONFLICT (id) DO UPDATE SET display_name = EXCLUDED.display_name, enabled = EXCLUDED.enabled, \
                 handover_deadline_ms = EXCLUDED.handover_deadline_ms, resend_budget = EXCLUDED.resend_budget, \
                 topic = EXCLUDED.topic, updated_at = EXCLUDED.updated_at \
             RETURNING {PARTNER_COLUMNS}"
        ))
        .bind(&partner.id)
        .bind(&partner.display_name)
        .bind(partner.enabled)
        .bind(partner.handover_deadline.num_milliseconds())
        .bind(partner.resend_budget)
        .bind(&partner.topic)
        .bind(partner.updated_at)
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
            "UPDATE partners SET enabled = FALSE, updated_at = $2 WHERE id = $1 RETURNING {PARTNER_COLUMNS}"
        ))
        .bind(id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(partner_from_row)
        .transpose()
    }

    async fn add_key(&self, key: &PartnerKeyRecord) -> Result<PartnerKeyRecord, StoreError> {
        let row = sqlx::query(&format!(
            "INSERT INTO partner_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, NULL) RETURNING {KEY_COLUMNS}"
        ))
        .bind(&key.partner_id)
        .bind(&key.key_id)
        .bind(&key.public_key)
        .bind(key.created_at)
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
            "UPDATE partner_keys SET revoked_at = COALESCE(revoked_at, $3) \
             WHERE partner_id = $1 AND key_id = $2 RETURNING {KEY_COLUMNS}"
        ))
        .bind(partner_id)
        .bind(key_id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(key_from_row)
        .transpose()
    }

    async fn list_keys(&self, partner_id: &str) -> Result<Vec<PartnerKeyRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM partner_keys WHERE partner_id = $1 ORDER BY key_id"
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
            "INSERT INTO routes ({ROUTE_COLUMNS}, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
             ON CONFLICT (id) DO UPDATE SET partner_id = EXCLUDED.partner_id, country_code = EXCLUDED.country_code, \
                 region = EXCLUDED.region, postal_prefix = EXCLUDED.postal_prefix, priority = EXCLUDED.priority, \
                 enabled = EXCLUDED.enabled, updated_at = EXCLUDED.updated_at \
             RETURNING {ROUTE_COLUMNS}"
        ))
        .bind(&route.id)
        .bind(&route.partner_id)
        .bind(&route.country_code)
        .bind(&route.region)
        .bind(&route.postal_prefix)
        .bind(route.priority)
        .bind(route.enabled)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        route_from_row(&row)
    }

    async fn delete_route(&self, id: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM routes WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn order_destination(&self, order_id: Uuid) -> Result<Option<ShipTo>, StoreError> {
        sqlx::query(
            "SELECT ship_line1, ship_line2, ship_city, ship_region, ship_postal_code, ship_country_code \
             FROM orders WHERE id = $1",
        )
        .bind(order_id)
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
             WHERE ($1::text IS NULL OR d.state = $1) AND ($2::text IS NULL OR d.partner_id = $2) \
               AND ($3::uuid IS NULL OR d.order_id > $3) \
             ORDER BY d.order_id LIMIT $4"
        ))
        .bind(filter.state.map(DispatchState::short_name))
        .bind(filter.partner_id.as_deref())
        .bind(after)
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
            "SELECT {DISPATCH_COLUMNS} FROM dispatch d JOIN orders o ON o.id = d.order_id WHERE d.order_id = $1"
        ))
        .bind(order_id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let attempts = sqlx::query(
            "SELECT attempt, at, error, partner_id, topic FROM dispatch_attempts \
             WHERE order_id = $1 ORDER BY id DESC LIMIT 100",
        )
        .bind(order_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(AttemptRecord {
                attempt: row.try_get("attempt")?,
                at: row.try_get("at")?,
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
        let ids = ids.to_vec();
        // One NOTIFY per transaction reaches every dispatcher (Postgres folds identical ones).
        let retried: Vec<Uuid> = sqlx::query_scalar(&format!(
            "WITH retried AS ( \
                 UPDATE dispatch SET state = 'PENDING', attempts = 0, resends = 0, next_attempt_at = $1, \
                     ack_due_at = NULL, updated_at = $1 \
                 WHERE state IN ({states}) AND (lease_expires_at IS NULL OR lease_expires_at <= $1) \
                   AND CASE WHEN cardinality($2::uuid[]) > 0 THEN order_id = ANY($2) \
                            ELSE ($3::text IS NULL OR state = $3) AND ($4::text IS NULL OR partner_id = $4) END \
                 RETURNING order_id) \
             SELECT r.order_id FROM retried r \
             CROSS JOIN LATERAL (SELECT pg_notify('waybill_outbox', '')) AS wake \
             ORDER BY r.order_id",
            states = retryable_state_list()
        ))
        .bind(now)
        .bind(&ids)
        .bind(filter.state.map(DispatchState::short_name))
        .bind(filter.partner_id.as_deref())
        .fetch_all(&self.pool)
        .await?;
        Ok(retried)
    }
}

struct PgEventBatch {
    tx: Transaction<'static, Postgres>,
    events: Vec<UnpublishedEvent>,
}

#[async_trait]
impl EventBatch for PgEventBatch {
    fn events(&self) -> &[UnpublishedEvent] {
        &self.events
    }

    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.rollback().await?;
        Ok(())
    }

    async fn mark_published(self: Box<Self>, now: DateTime<Utc>) -> Result<(), StoreError> {
        let Self { mut tx, events } = *self;
        if !events.is_empty() {
            sqlx::query(
                "UPDATE order_status_events e SET published_at = $1 \
                 FROM UNNEST($2::uuid[], $3::bigint[]) AS k (order_id, seq) \
                 WHERE e.order_id = k.order_id AND e.seq = k.seq",
            )
            .bind(now)
            .bind(events.iter().map(|e| e.order_id).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.seq).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

struct PgAuditBatch {
    tx: Transaction<'static, Postgres>,
    copies: Vec<AuditCopy>,
}

#[async_trait]
impl AuditBatch for PgAuditBatch {
    fn copies(&self) -> &[AuditCopy] {
        &self.copies
    }

    async fn settle(
        self: Box<Self>,
        delivered: &[Uuid],
        failed: &[AuditCopy],
    ) -> Result<(), StoreError> {
        let Self { mut tx, .. } = *self;
        if !delivered.is_empty() {
            sqlx::query("DELETE FROM audit_outbox WHERE order_id = ANY($1)")
                .bind(delivered)
                .execute(&mut *tx)
                .await?;
        }
        if !failed.is_empty() {
            sqlx::query(
                "UPDATE audit_outbox a SET attempts = f.attempts, last_error = f.last_error, \
                     due_at = f.due_at \
                 FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::timestamptz[]) \
                     AS f (order_id, attempts, last_error, due_at) \
                 WHERE a.order_id = f.order_id",
            )
            .bind(failed.iter().map(|c| c.order_id).collect::<Vec<_>>())
            .bind(failed.iter().map(|c| c.attempts).collect::<Vec<_>>())
            .bind(
                failed
                    .iter()
                    .map(|c| c.last_error.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(failed.iter().map(|c| c.due_at).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn leased_from_row(row: &PgRow) -> Result<LeasedOrder, StoreError> {
    Ok(LeasedOrder {
        order_id: row.try_get("order_id")?,
        state: parse_state(row.try_get("state")?)?,
        attempts: row.try_get("attempts")?,
        resends: row.try_get("resends")?,
        partner_id: row.try_get("partner_id")?,
        acknowledged: row.try_get("acknowledged")?,
        rejected_partners: row.try_get("rejected_partners")?,
        traceparent: row.try_get("traceparent")?,
        tracestate: row.try_get("tracestate")?,
        placed_at: row.try_get("placed_at")?,
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

fn ship_to_from_row(row: &PgRow) -> Result<ShipTo, StoreError> {
    Ok(ShipTo {
        line1: row.try_get("ship_line1")?,
        line2: row.try_get("ship_line2")?,
        city: row.try_get("ship_city")?,
        region: row.try_get("ship_region")?,
        postal_code: row.try_get("ship_postal_code")?,
        country_code: row.try_get("ship_country_code")?,
    })
}

fn partner_from_row(row: &PgRow) -> Result<PartnerRecord, StoreError> {
    Ok(PartnerRecord {
        id: row.try_get("id")?,
        display_name: row.try_get("display_name")?,
        enabled: row.try_get("enabled")?,
        handover_deadline: deadline_from_ms(row.try_get("handover_deadline_ms")?),
        resend_budget: row.try_get("resend_budget")?,
        topic: row.try_get("topic")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn route_from_row(row: &PgRow) -> Result<RouteRecord, StoreError> {
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

fn key_from_row(row: &PgRow) -> Result<PartnerKeyRecord, StoreError> {
    Ok(PartnerKeyRecord {
        partner_id: row.try_get("partner_id")?,
        key_id: row.try_get("key_id")?,
        public_key: row.try_get("public_key")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

fn dispatch_from_row(row: &PgRow) -> Result<DispatchRecord, StoreError> {
    Ok(DispatchRecord {
        order_id: row.try_get("order_id")?,
        state: parse_state(row.try_get("state")?)?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_error: row.try_get("last_error")?,
        partner_id: row.try_get("partner_id")?,
        route_id: row.try_get("route_id")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        sent_at: row.try_get("sent_at")?,
        resends: row.try_get("resends")?,
        ack_due_at: row.try_get("ack_due_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        currency_code: row.try_get("currency_code")?,
        total_minor: row.try_get("total_minor")?,
    })
}
