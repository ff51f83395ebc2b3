//! The store's traits, split by their users: the relay ([`RelayStore`]: leases, records,
//! events, audit copies, retention) and `DispatchAdmin` ([`AdminStore`]: partners, keys,
//! routes, dispatch rows, the backlog), both reading partners and routes as they are now
//! ([`RoutingStore`]). [`DispatchStore`] is all of them: what one database gives.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    error::StoreError,
    model::{AuditBatch, Cleaned, EventBatch, Lease, LeaseRequest, RecordReport},
};
use crate::domain::{
    cycle::replay::{self, ReplayBounds, Replayed},
    model::{
        AttemptRecord, Backlog, DispatchFilter, DispatchRecord, PartnerKeyRecord, PartnerRecord,
        RouteRecord, ShipTo,
    },
    record::BatchRecord,
    route_change::RecentDestination,
    routing::RoutingTable,
};

/// Partners and routes as they are now, read by the relay (per batch) and by `DispatchAdmin`.
#[async_trait]
pub trait RoutingStore: Send + Sync + fmt::Debug + 'static {
    /// Partners and routes as they are now.
    async fn routing_table(&self) -> Result<RoutingTable, StoreError>;
    /// Every partner, by id.
    async fn list_partners(&self) -> Result<Vec<PartnerRecord>, StoreError>;
    /// Every route, by id.
    async fn list_routes(&self) -> Result<Vec<RouteRecord>, StoreError>;
}

/// What the outbox relay reads and writes.
#[async_trait]
pub trait RelayStore: RoutingStore {
    /// Leases due rows (`PENDING`, or `RETRYING` due by `now`, not under a live lease).
    async fn lease_due(&self, lease: &LeaseRequest) -> Result<Lease, StoreError>;
    /// Leases `SENT` rows whose handover deadline has passed.
    async fn lease_overdue(&self, lease: &LeaseRequest) -> Result<Lease, StoreError>;
    /// Records a batch's outcome in one transaction, fenced by `lease`, and ends the lease.
    async fn record(
        &self,
        lease: Lease,
        batch: &BatchRecord,
        now: DateTime<Utc>,
    ) -> Result<RecordReport, StoreError>;
    /// Gives a lease's rows back unrecorded, due again at once. (Dropping a Postgres lease does
    /// the same as its connection returns to the pool.)
    async fn release(&self, lease: Lease) -> Result<(), StoreError>;
    /// Gives up every lease `owner` wrote into rows (SQLite; at shutdown), so another instance
    /// takes them at once. (A Postgres lease ends with its transaction.)
    async fn release_leases(&self, owner: &str, now: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Status-history events not yet on the order-events topic, oldest first.
    async fn claim_events(&self, limit: u32) -> Result<Box<dyn EventBatch>, StoreError>;
    /// Audit copies due by `now` (at most `limit`), claimed so no other instance produces them
    /// at the same time.
    async fn claim_audits(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Box<dyn AuditBatch>, StoreError>;
    /// Removes, at most `limit` of each, what operators no longer need from before `before`
    /// (the retention job): attempt-log entries, and the stored message of dispatches their
    /// partner acknowledged, sent before then.
    async fn clean_up(&self, before: DateTime<Utc>, limit: u32) -> Result<Cleaned, StoreError>;
}

/// What `DispatchAdmin` and the relay's stats read and change for operators.
#[async_trait]
pub trait AdminStore: RoutingStore {
    /// Counts by state and the oldest due row.
    async fn backlog(&self, now: DateTime<Utc>) -> Result<Backlog, StoreError>;
    /// Creates or updates a partner (its `created_at` is kept on update).
    async fn upsert_partner(&self, partner: &PartnerRecord) -> Result<PartnerRecord, StoreError>;
    /// Disables a partner; `None` if unknown.
    async fn disable_partner(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PartnerRecord>, StoreError>;
    /// Adds a key ([`StoreError::Duplicate`] if the id is taken, [`StoreError::MissingReference`]
    /// if the partner is unknown).
    async fn add_key(&self, key: &PartnerKeyRecord) -> Result<PartnerKeyRecord, StoreError>;
    /// Revokes a key (keeps the first revocation time); `None` if unknown.
    async fn revoke_key(
        &self,
        partner_id: &str,
        key_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PartnerKeyRecord>, StoreError>;
    /// A partner's keys.
    async fn list_keys(&self, partner_id: &str) -> Result<Vec<PartnerKeyRecord>, StoreError>;
    /// Creates or replaces a route ([`StoreError::MissingReference`] if the partner is unknown).
    async fn set_route(
        &self,
        route: &RouteRecord,
        now: DateTime<Utc>,
    ) -> Result<RouteRecord, StoreError>;
    /// Deletes a route; whether it existed.
    async fn delete_route(&self, id: &str) -> Result<bool, StoreError>;
    /// An order's destination; `None` if unknown.
    async fn order_destination(&self, order_id: Uuid) -> Result<Option<ShipTo>, StoreError>;
    /// Dispatch rows matching `filter` with ids after `after`, by id, at most `limit`.
    async fn list_dispatches(
        &self,
        filter: &DispatchFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<DispatchRecord>, StoreError>;
    /// One dispatch row and its latest attempts (most recent first).
    async fn get_dispatch(
        &self,
        order_id: Uuid,
    ) -> Result<Option<(DispatchRecord, Vec<AttemptRecord>)>, StoreError>;
    /// The rows a replay may take at `now` (the guard of [`crate::domain::cycle::replay`]):
    /// the named ones, or (with `ids` empty) every one matching `filter`; only rows in a
    /// retryable state and not under a live lease. The oldest first, at most `limit`, and how
    /// many match in all.
    async fn replay_candidates(
        &self,
        ids: &[Uuid],
        filter: &DispatchFilter,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<(Vec<Uuid>, i64), StoreError>;

    /// Carries out a replay's rows in one statement, each only if its guard still holds at
    /// `now`; wakes the relays. Returns the ids changed, by id.
    async fn replay(&self, rows: &[Replayed], now: DateTime<Utc>) -> Result<Vec<Uuid>, StoreError>;

    /// Sends rows back to `PENDING` with a fresh budget, all due now and with no cap: the
    /// named ones, or (with `ids` empty) every one matching `filter` (a replay of
    /// [`AdminStore::replay_candidates`]). Returns the ids changed, by id.
    async fn retry(
        &self,
        ids: &[Uuid],
        filter: &DispatchFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let (candidates, matched) = self.replay_candidates(ids, filter, now, u32::MAX).await?;
        let bounds = ReplayBounds {
            max_orders: u32::MAX,
            spread: chrono::Duration::zero(),
        };
        let plan = replay::plan(&candidates, matched, &bounds, now);
        self.replay(&plan.rows, now).await
    }

    /// Where the orders created since `since` ship to, with the partners that refused them,
    /// counted per destination: the busiest first, at most `limit`.
    async fn recent_destinations(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<RecentDestination>, StoreError>;
}

/// The whole database view: the relay's and the operators'. Every type with both is one.
pub trait DispatchStore: RelayStore + AdminStore {}

impl<T: RelayStore + AdminStore> DispatchStore for T {}
