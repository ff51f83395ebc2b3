//! The one store, [`SqlDispatchStore`], and what it does for the relay: every statement whose
//! Rust is the same on both backends is here, written once with [`on_pool!`]; the steps that
//! move whole batches go to `postgres.rs` (arrays, row locks, `NOTIFY`) or `sqlite.rs` (JSON
//! arrays, one writer, the change feed). What it does for operators is in `admin.rs`.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;
use waybill_service_kit::{
    db::{Backend, ChangeFeed, Database, Id, Instant},
    on_pool,
};

use super::{
    error::StoreError,
    legacy,
    model::{AuditBatch, Cleaned, EventBatch, Lease, LeaseRequest, RecordReport},
    pg_events, postgres,
    rows::{LeasedRow, PartnerRow, RouteRow},
    sqlite,
    statements::{LeaseKind, fenced},
    traits::{RelayStore, RoutingStore},
};
use crate::domain::{
    model::{LeasedOrder, PartnerRecord, RouteRecord},
    record::{BatchRecord, Fence},
    routing::RoutingTable,
};

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
const LIST_PARTNERS: &str = "SELECT id, display_name, enabled, handover_deadline_ms, \
                             resend_budget, topic, created_at, updated_at \
                             FROM partners ORDER BY id";
const LIST_ROUTES: &str = "SELECT id, partner_id, country_code, region, postal_prefix, \
                           priority, enabled FROM routes ORDER BY id";

/// Dispatch state in the services' database, Postgres or SQLite.
#[derive(Debug, Clone)]
pub struct SqlDispatchStore {
    pub(super) db: Backend,
    /// Commits announced in this process (SQLite has no `NOTIFY`, and an embedded database has
    /// no other process to tell; on Postgres the statements `NOTIFY` themselves).
    pub(super) feed: ChangeFeed,
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
        let routing_version = rows.first().map(LeasedRow::routing_version);
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
        let mut lease = match held {
            Some(held) => Lease::held(fence, orders, held),
            None => Lease::new(fence, orders),
        };
        lease.routing_version = routing_version;
        Ok(lease)
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

#[async_trait]
impl RoutingStore for SqlDispatchStore {
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

    async fn list_routes(&self) -> Result<Vec<RouteRecord>, StoreError> {
        let rows: Vec<RouteRow> = on_pool!(&self.db, |pool| {
            sqlx::query_as(LIST_ROUTES).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(Into::into).collect())
    }
}

#[async_trait]
impl RelayStore for SqlDispatchStore {
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
}
