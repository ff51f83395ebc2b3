//! What [`SqlDispatchStore`] does for operators ([`AdminStore`]): partners, keys and routes,
//! the dispatch rows and their attempts, retries, and the backlog.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;
use waybill_proto::v1::DispatchState;
use waybill_service_kit::{
    db::{Backend, Id, IdList, Instant, Statement, TextList},
    on_pool,
};

use super::{
    error::StoreError,
    postgres,
    rows::{
        AttemptRow, DestinationRow, DispatchRow, KeyRow, PartnerRow, RouteRow, ShipToRow,
        StateCountRow, convert,
    },
    sql::SqlDispatchStore,
    sqlite,
    statements::RETRYABLE_STATES,
    traits::AdminStore,
};
use crate::domain::{
    cycle::replay::Replayed,
    model::{
        AttemptRecord, Backlog, DispatchFilter, DispatchRecord, PartnerKeyRecord, PartnerRecord,
        RouteRecord, ShipTo,
    },
    route_change::RecentDestination,
};

const LIST_DISPATCHES: Statement = Statement {
    postgres: include_str!("sql/list_dispatches.pg.sql"),
    sqlite: include_str!("sql/list_dispatches.sqlite.sql"),
};
const GET_DISPATCH: &str = include_str!("sql/get_dispatch.sql");
const LIST_ATTEMPTS: &str = "SELECT attempt, at, error, partner_id, topic FROM dispatch_attempts \
                             WHERE order_id = $1 ORDER BY id DESC LIMIT 100";
/// Rows still to do or to look at, by state: `ACKNOWLEDGED` is done (and would make every
/// scrape count the whole history), so it is left out; the list lets `dispatch_by_state` serve.
const COUNT_BY_STATE: &str = "SELECT state, count(*) AS rows FROM dispatch \
                              WHERE state IN ('PENDING', 'RETRYING', 'SENT', 'DEAD', \
                                              'UNROUTABLE', 'UNACKNOWLEDGED') \
                              GROUP BY state ORDER BY state";
const OLDEST_DUE: &str = "SELECT min(next_attempt_at) FROM dispatch \
                          WHERE state IN ('PENDING', 'RETRYING') AND next_attempt_at <= $1";
const COUNT_AUDITS: &str = "SELECT count(*) FROM audit_outbox";
/// Per partner, the oldest latest send of an order not confirmed yet (the `SENT` rows only:
/// the orders in flight, served by `dispatch_by_state`).
const OLDEST_UNCONFIRMED: &str = "SELECT partner_id, min(sent_at) FROM dispatch \
                                  WHERE state = 'SENT' AND partner_id IS NOT NULL \
                                    AND sent_at IS NOT NULL \
                                  GROUP BY partner_id ORDER BY partner_id";
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
const UPSERT_PARTNER: &str = include_str!("sql/upsert_partner.sql");
const DISABLE_PARTNER: &str = "UPDATE partners SET enabled = FALSE, updated_at = $2 WHERE id = $1 \
                               RETURNING id, display_name, enabled, handover_deadline_ms, \
                               resend_budget, topic, created_at, updated_at";
const ADD_KEY: &str = "INSERT INTO partner_keys \
                       (partner_id, key_id, public_key, created_at, revoked_at) \
                       VALUES ($1, $2, $3, $4, NULL) \
                       RETURNING partner_id, key_id, public_key, created_at, revoked_at, \
                       last_used_at";
const REVOKE_KEY: &str = "UPDATE partner_keys SET revoked_at = COALESCE(revoked_at, $3) \
                          WHERE partner_id = $1 AND key_id = $2 \
                          RETURNING partner_id, key_id, public_key, created_at, revoked_at, \
                          last_used_at";
const LIST_KEYS: &str = "SELECT partner_id, key_id, public_key, created_at, revoked_at, \
                         last_used_at FROM partner_keys WHERE partner_id = $1 ORDER BY key_id";
const SET_ROUTE: &str = include_str!("sql/set_route.sql");
const DELETE_ROUTE: &str = "DELETE FROM routes WHERE id = $1";
const REPLAY_CANDIDATES: Statement = Statement {
    postgres: include_str!("sql/replay_candidates.pg.sql"),
    sqlite: include_str!("sql/replay_candidates.sqlite.sql"),
};
const RECENT_DESTINATIONS: Statement = Statement {
    postgres: include_str!("sql/recent_destinations.pg.sql"),
    sqlite: include_str!("sql/recent_destinations.sqlite.sql"),
};
const ORDER_DESTINATION: &str = "SELECT ship_line1, ship_line2, ship_city, ship_region, \
                                 ship_postal_code, ship_country_code FROM orders WHERE id = $1";

#[async_trait]
impl AdminStore for SqlDispatchStore {
    async fn backlog(&self, now: DateTime<Utc>) -> Result<Backlog, StoreError> {
        let (counts, oldest, audit_pending, unpublished, unconfirmed): (
            Vec<StateCountRow>,
            Option<Instant>,
            i64,
            Option<Instant>,
            Vec<(String, Instant)>,
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
                sqlx::query_as(OLDEST_UNCONFIRMED).fetch_all(pool).await?,
            )
        });
        Ok(Backlog {
            by_state: convert(counts)?,
            oldest_due_at: oldest.map(Into::into),
            audit_pending,
            oldest_unpublished_at: unpublished.map(Into::into),
            oldest_unconfirmed_by_partner: unconfirmed
                .into_iter()
                .map(|(partner, at)| (partner, at.into()))
                .collect(),
        })
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

    async fn replay_candidates(
        &self,
        ids: &[Uuid],
        filter: &DispatchFilter,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<(Vec<Uuid>, i64), StoreError> {
        let rows: Vec<(Id, i64)> = on_pool!(&self.db, REPLAY_CANDIDATES, |pool, sql| {
            sqlx::query_as(sql)
                .bind(Instant(now))
                .bind(IdList(ids.to_vec()))
                .bind(filter.state.map(DispatchState::short_name))
                .bind(filter.partner_id.as_deref())
                .bind(retryable_states())
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        let matched = rows.first().map_or(0, |(_, matched)| *matched);
        Ok((rows.into_iter().map(|(id, _)| id.into()).collect(), matched))
    }

    async fn replay(&self, rows: &[Replayed], now: DateTime<Utc>) -> Result<Vec<Uuid>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let states = retryable_states();
        match &self.db {
            Backend::Postgres(pool) => postgres::replay(pool, rows, now, &states).await,
            Backend::Sqlite(pool) => sqlite::replay(pool, &self.feed, rows, now, &states).await,
        }
    }

    async fn recent_destinations(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<RecentDestination>, StoreError> {
        let rows: Vec<DestinationRow> = on_pool!(&self.db, RECENT_DESTINATIONS, |pool, sql| {
            sqlx::query_as(sql)
                .bind(Instant(since))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().map(Into::into).collect())
    }
}

/// The retryable states as bound into the replay's statements.
fn retryable_states() -> TextList {
    RETRYABLE_STATES.iter().map(|s| s.short_name()).collect()
}
