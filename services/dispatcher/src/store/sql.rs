//! The one [`DispatchStore`]: every statement whose Rust is the same on both backends is here,
//! written once with [`on_pool!`]; the steps that move whole batches go to `postgres.rs`
//! (arrays, row locks, `NOTIFY`) or `sqlite.rs` (JSON arrays, one writer, the change feed).

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;
use waybill_proto::v1::DispatchState;
use waybill_service_kit::{
    db::{Backend, ChangeFeed, Database, Id, Instant, Statement, TextList},
    on_pool,
};

use super::{
    ACKNOWLEDGING_STATUSES, AuditBatch, AuditCopy, BatchRecord, Cleaned, DispatchStore, EventBatch,
    Fence, Lease, LeaseRequest, RETRYABLE_STATES, RecordReport, StoreError, headers_to_json,
    legacy, pg_events, postgres,
    rows::{
        AttemptRow, DispatchRow, KeyRow, LeasedRow, PartnerRow, RouteRow, ShipToRow, StateCountRow,
        convert,
    },
    sqlite,
};
use crate::domain::{
    model::{
        AttemptRecord, Backlog, DispatchFilter, DispatchRecord, LeasedOrder, PartnerKeyRecord,
        PartnerRecord, RouteRecord, ShipTo,
    },
    routing::RoutingTable,
};

const LIST_DISPATCHES: Statement = Statement {
    postgres: include_str!("sql/list_dispatches.pg.sql"),
    sqlite: include_str!("sql/list_dispatches.sqlite.sql"),
};
const GET_DISPATCH: &str = include_str!("sql/get_dispatch.sql");
const LIST_ATTEMPTS: &str = "SELECT attempt, at, error, partner_id, topic FROM dispatch_attempts \
                             WHERE order_id = $1 ORDER BY id DESC LIMIT 100";
const RELEASE_LEASES: &str = "UPDATE dispatch SET lease_owner = NULL, lease_expires_at = NULL, \
                              batch_id = NULL, updated_at = $2 WHERE lease_owner = $1";
/// SQLite's lease of one batch, given back (`updated_at` is left: nothing about the row changed).
const RELEASE_LEASE: &str = "UPDATE dispatch SET lease_owner = NULL, lease_expires_at = NULL, \
                             batch_id = NULL WHERE lease_owner = $1 AND batch_id = $2";
/// The oldest `$2` entries by id (ids grow with time), those of them from before `$1`: the
/// primary key is walked from its start, so a round costs its batch whatever the table's size.
const DELETE_OLD_ATTEMPTS: &str = "DELETE FROM dispatch_attempts WHERE id IN \
                                   (SELECT id FROM dispatch_attempts ORDER BY id LIMIT $2) \
                                   AND at < $1";
/// Served by the partial index `dispatch_acknowledged_messages` (migration 0007).
const CLEAR_OLD_MESSAGES: &str = "UPDATE dispatch SET message = NULL WHERE order_id IN \
                                  (SELECT order_id FROM dispatch \
                                   WHERE state = 'ACKNOWLEDGED' AND message IS NOT NULL \
                                   AND sent_at < $1 ORDER BY sent_at LIMIT $2)";
const COUNT_BY_STATE: &str =
    "SELECT state, count(*) AS rows FROM dispatch GROUP BY state ORDER BY state";
const OLDEST_DUE: &str = "SELECT min(next_attempt_at) FROM dispatch \
                          WHERE state IN ('PENDING', 'RETRYING') AND next_attempt_at <= $1";
const COUNT_AUDITS: &str = "SELECT count(*) FROM audit_outbox";
/// When the next event to publish was recorded: on Postgres the first unpublished one after
/// the cursor (an index probe), or one from before migration 0006; on SQLite the oldest
/// unmarked one.
const OLDEST_UNPUBLISHED: Statement = Statement {
    postgres: "SELECT least( \
                 (SELECT e.recorded_at FROM order_status_events e, event_cursor c \
                  WHERE e.xid IS NOT NULL AND e.published_at IS NULL \
                    AND (e.xid, e.order_id, e.seq) > (c.xid, c.order_id, c.seq) \
                  ORDER BY e.xid, e.order_id, e.seq LIMIT 1), \
                 (SELECT min(recorded_at) FROM order_status_events \
                  WHERE published_at IS NULL AND xid IS NULL))",
    sqlite: "SELECT min(recorded_at) FROM order_status_events WHERE published_at IS NULL",
};
const LIST_PARTNERS: &str = "SELECT id, display_name, enabled, handover_deadline_ms, \
                             resend_budget, topic, created_at, updated_at \
                             FROM partners ORDER BY id";
const UPSERT_PARTNER: &str = include_str!("sql/upsert_partner.sql");
const DISABLE_PARTNER: &str = "UPDATE partners SET enabled = FALSE, updated_at = $2 WHERE id = $1 \
                               RETURNING id, display_name, enabled, handover_deadline_ms, \
                               resend_budget, topic, created_at, updated_at";
const ADD_KEY: &str = "INSERT INTO partner_keys \
                       (partner_id, key_id, public_key, created_at, revoked_at) \
                       VALUES ($1, $2, $3, $4, NULL) \
                       RETURNING partner_id, key_id, public_key, created_at, revoked_at";
const REVOKE_KEY: &str = "UPDATE partner_keys SET revoked_at = COALESCE(revoked_at, $3) \
                          WHERE partner_id = $1 AND key_id = $2 \
                          RETURNING partner_id, key_id, public_key, created_at, revoked_at";
const LIST_KEYS: &str = "SELECT partner_id, key_id, public_key, created_at, revoked_at \
                         FROM partner_keys WHERE partner_id = $1 ORDER BY key_id";
const LIST_ROUTES: &str = "SELECT id, partner_id, country_code, region, postal_prefix, \
                           priority, enabled FROM routes ORDER BY id";
const SAVE_AUDIT_COPY: &str = include_str!("sql/save_audit_copy.sql");
const SET_ROUTE: &str = include_str!("sql/set_route.sql");
const DELETE_ROUTE: &str = "DELETE FROM routes WHERE id = $1";
const ORDER_DESTINATION: &str = "SELECT ship_line1, ship_line2, ship_city, ship_region, \
                                 ship_postal_code, ship_country_code FROM orders WHERE id = $1";

/// Which rows a lease takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LeaseKind {
    /// `PENDING`, or `RETRYING` rows due.
    Due,
    /// `SENT` rows whose handover deadline passed.
    Overdue,
}

/// Dispatch state in the services' database, Postgres or SQLite.
#[derive(Debug, Clone)]
pub struct SqlDispatchStore {
    db: Backend,
    /// Commits announced in this process (SQLite has no `NOTIFY`, and an embedded database has
    /// no other process to tell; on Postgres the statements `NOTIFY` themselves).
    feed: ChangeFeed,
}

impl SqlDispatchStore {
    /// A store on `db` (already migrated).
    pub fn new(db: &Database) -> Self {
        Self {
            db: db.backend().clone(),
            feed: db.feed().clone(),
        }
    }

    /// Leases rows of `kind`; rows placed before the outbox carried its message get it built
    /// from the order tables.
    async fn lease(&self, kind: LeaseKind, lease: &LeaseRequest) -> Result<Lease, StoreError> {
        let (rows, held) = match &self.db {
            Backend::Postgres(pool) => postgres::lease(pool, kind, lease).await?,
            Backend::Sqlite(pool) => (sqlite::lease(pool, kind, lease).await?, None),
        };
        let fence = Fence {
            owner: lease.owner.clone(),
            batch_id: lease.batch_id,
        };
        let orders = match self.messages_built(rows).await {
            Ok(orders) => orders,
            Err(error) => {
                if let Some(held) = held {
                    // The error is the one to report; the rows are free either way.
                    let _ = held.release().await;
                }
                return Err(error);
            }
        };
        Ok(match held {
            Some(held) => Lease::held(fence, orders, held),
            None => Lease::new(fence, orders),
        })
    }

    /// The leased orders, with the messages of rows placed before the outbox carried them built
    /// from the order tables.
    async fn messages_built(&self, rows: Vec<LeasedRow>) -> Result<Vec<LeasedOrder>, StoreError> {
        let without: Vec<Uuid> = rows
            .iter()
            .filter(|row| !row.has_message())
            .map(LeasedRow::id)
            .collect();
        let mut legacy = if without.is_empty() {
            HashMap::new()
        } else {
            legacy::messages(&self.db, &without).await?
        };
        rows.into_iter()
            .map(|row| row.into_leased(&mut legacy))
            .collect()
    }
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

#[async_trait]
impl DispatchStore for SqlDispatchStore {
    async fn lease_due(&self, lease: &LeaseRequest) -> Result<Lease, StoreError> {
        self.lease(LeaseKind::Due, lease).await
    }

    async fn lease_overdue(&self, lease: &LeaseRequest) -> Result<Lease, StoreError> {
        self.lease(LeaseKind::Overdue, lease).await
    }

    async fn record(
        &self,
        lease: Lease,
        batch: &BatchRecord,
        now: DateTime<Utc>,
    ) -> Result<RecordReport, StoreError> {
        match (&self.db, lease.held) {
            (_, Some(held)) => held.record(batch, now).await,
            (Backend::Sqlite(pool), None) => {
                sqlite::record(pool, &self.feed, &lease.fence, batch, now).await
            }
            // On Postgres the fence is the lease's transaction: a lease that holds none (it
            // found no rows, or is not this store's) holds none of the batch's rows.
            (Backend::Postgres(_), None) => Ok(RecordReport {
                fenced: fenced(batch, &HashSet::new()),
                ..RecordReport::default()
            }),
        }
    }

    async fn release(&self, lease: Lease) -> Result<(), StoreError> {
        if let Some(held) = lease.held {
            return held.release().await;
        }
        on_pool!(&self.db, |pool| {
            sqlx::query(RELEASE_LEASE)
                .bind(&lease.fence.owner)
                .bind(Id(lease.fence.batch_id))
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    async fn release_leases(&self, owner: &str, now: DateTime<Utc>) -> Result<u64, StoreError> {
        // A Postgres lease writes no owner (it ends with its transaction), so there is nothing
        // to look for, and `lease_owner` has no index: the search would read the whole table.
        if matches!(self.db, Backend::Postgres(_)) {
            return Ok(0);
        }
        let result = on_pool!(&self.db, |pool| {
            sqlx::query(RELEASE_LEASES)
                .bind(owner)
                .bind(Instant(now))
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(result)
    }

    async fn claim_events(&self, limit: u32) -> Result<Box<dyn EventBatch>, StoreError> {
        match &self.db {
            Backend::Postgres(pool) => pg_events::claim_events(pool, limit).await,
            Backend::Sqlite(pool) => sqlite::claim_events(pool, limit).await,
        }
    }

    async fn claim_audits(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Box<dyn AuditBatch>, StoreError> {
        match &self.db {
            Backend::Postgres(pool) => postgres::claim_audits(pool, now, limit).await,
            Backend::Sqlite(pool) => sqlite::claim_audits(pool, now, limit).await,
        }
    }

    async fn clean_up(&self, before: DateTime<Utc>, limit: u32) -> Result<Cleaned, StoreError> {
        Ok(on_pool!(&self.db, |pool| {
            Cleaned {
                attempts: sqlx::query(DELETE_OLD_ATTEMPTS)
                    .bind(Instant(before))
                    .bind(i64::from(limit))
                    .execute(pool)
                    .await?
                    .rows_affected(),
                messages: sqlx::query(CLEAR_OLD_MESSAGES)
                    .bind(Instant(before))
                    .bind(i64::from(limit))
                    .execute(pool)
                    .await?
                    .rows_affected(),
            }
        }))
    }

    async fn backlog(&self, now: DateTime<Utc>) -> Result<Backlog, StoreError> {
        let (counts, oldest, audit_pending, unpublished): (
            Vec<StateCountRow>,
            Option<Instant>,
            i64,
            Option<Instant>,
        ) = on_pool!(&self.db, OLDEST_UNPUBLISHED, |pool, oldest_unpublished| {
            (
                sqlx::query_as(COUNT_BY_STATE).fetch_all(pool).await?,
                sqlx::query_scalar(OLDEST_DUE)
                    .bind(Instant(now))
                    .fetch_one(pool)
                    .await?,
                sqlx::query_scalar(COUNT_AUDITS).fetch_one(pool).await?,
                sqlx::query_scalar(oldest_unpublished)
                    .fetch_one(pool)
                    .await?,
            )
        });
        Ok(Backlog {
            by_state: convert(counts)?,
            oldest_due_at: oldest.map(Into::into),
            audit_pending,
            oldest_unpublished_at: unpublished.map(Into::into),
        })
    }

    async fn routing_table(&self) -> Result<RoutingTable, StoreError> {
        Ok(RoutingTable::new(
            self.list_partners().await?,
            self.list_routes().await?,
        ))
    }

    async fn list_partners(&self) -> Result<Vec<PartnerRecord>, StoreError> {
        let rows: Vec<PartnerRow> = on_pool!(&self.db, |pool| {
            sqlx::query_as(LIST_PARTNERS).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn upsert_partner(&self, partner: &PartnerRecord) -> Result<PartnerRecord, StoreError> {
        let row: PartnerRow = on_pool!(&self.db, |pool| {
            sqlx::query_as(UPSERT_PARTNER)
                .bind(&partner.id)
                .bind(&partner.display_name)
                .bind(partner.enabled)
                .bind(partner.handover_deadline.num_milliseconds())
                .bind(partner.resend_budget)
                .bind(&partner.topic)
                .bind(Instant(partner.updated_at))
                .fetch_one(pool)
                .await?
        });
        Ok(row.into())
    }

    async fn disable_partner(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PartnerRecord>, StoreError> {
        let row: Option<PartnerRow> = on_pool!(&self.db, |pool| {
            sqlx::query_as(DISABLE_PARTNER)
                .bind(id)
                .bind(Instant(now))
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(Into::into))
    }

    async fn add_key(&self, key: &PartnerKeyRecord) -> Result<PartnerKeyRecord, StoreError> {
        let row: KeyRow = on_pool!(&self.db, |pool| {
            sqlx::query_as(ADD_KEY)
                .bind(&key.partner_id)
                .bind(&key.key_id)
                .bind(&key.public_key)
                .bind(Instant(key.created_at))
                .fetch_one(pool)
                .await?
        });
        Ok(row.into())
    }

    async fn revoke_key(
        &self,
        partner_id: &str,
        key_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PartnerKeyRecord>, StoreError> {
        let row: Option<KeyRow> = on_pool!(&self.db, |pool| {
            sqlx::query_as(REVOKE_KEY)
                .bind(partner_id)
                .bind(key_id)
                .bind(Instant(now))
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(Into::into))
    }

    async fn list_keys(&self, partner_id: &str) -> Result<Vec<PartnerKeyRecord>, StoreError> {
        let rows: Vec<KeyRow> = on_pool!(&self.db, |pool| {
            sqlx::query_as(LIST_KEYS)
                .bind(partner_id)
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn list_routes(&self) -> Result<Vec<RouteRecord>, StoreError> {
        let rows: Vec<RouteRow> = on_pool!(&self.db, |pool| {
            sqlx::query_as(LIST_ROUTES).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn set_route(
        &self,
        route: &RouteRecord,
        now: DateTime<Utc>,
    ) -> Result<RouteRecord, StoreError> {
        let row: RouteRow = on_pool!(&self.db, |pool| {
            sqlx::query_as(SET_ROUTE)
                .bind(&route.id)
                .bind(&route.partner_id)
                .bind(&route.country_code)
                .bind(&route.region)
                .bind(&route.postal_prefix)
                .bind(route.priority)
                .bind(route.enabled)
                .bind(Instant(now))
                .fetch_one(pool)
                .await?
        });
        Ok(row.into())
    }

    async fn delete_route(&self, id: &str) -> Result<bool, StoreError> {
        let deleted = on_pool!(&self.db, |pool| {
            sqlx::query(DELETE_ROUTE)
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(deleted > 0)
    }

    async fn order_destination(&self, order_id: Uuid) -> Result<Option<ShipTo>, StoreError> {
        let row: Option<ShipToRow> = on_pool!(&self.db, |pool| {
            sqlx::query_as(ORDER_DESTINATION)
                .bind(Id(order_id))
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(Into::into))
    }

    async fn list_dispatches(
        &self,
        filter: &DispatchFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<DispatchRecord>, StoreError> {
        let rows: Vec<DispatchRow> = on_pool!(&self.db, LIST_DISPATCHES, |pool, sql| {
            sqlx::query_as(sql)
                .bind(filter.state.map(DispatchState::short_name))
                .bind(filter.partner_id.as_deref())
                .bind(after.map(Id))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        convert(rows)
    }

    async fn get_dispatch(
        &self,
        order_id: Uuid,
    ) -> Result<Option<(DispatchRecord, Vec<AttemptRecord>)>, StoreError> {
        let found: Option<(DispatchRow, Vec<AttemptRow>)> = on_pool!(&self.db, |pool| {
            match sqlx::query_as(GET_DISPATCH)
                .bind(Id(order_id))
                .fetch_optional(pool)
                .await?
            {
                None => None,
                Some(row) => Some((
                    row,
                    sqlx::query_as(LIST_ATTEMPTS)
                        .bind(Id(order_id))
                        .fetch_all(pool)
                        .await?,
                )),
            }
        });
        found
            .map(|(row, attempts)| {
                Ok((
                    row.try_into()?,
                    attempts.into_iter().map(Into::into).collect(),
                ))
            })
            .transpose()
    }

    async fn retry(
        &self,
        ids: &[Uuid],
        filter: &DispatchFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let states: TextList = RETRYABLE_STATES.iter().map(|s| s.short_name()).collect();
        match &self.db {
            Backend::Postgres(pool) => postgres::retry(pool, ids, filter, now, &states).await,
            Backend::Sqlite(pool) => {
                sqlite::retry(pool, &self.feed, ids, filter, now, &states).await
            }
        }
    }
}
