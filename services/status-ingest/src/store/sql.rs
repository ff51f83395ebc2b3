//! The one [`IngestStore`]: key lookup and purging are written once with [`on_pool!`]; the
//! report transaction goes to `postgres.rs` (two statements, the order row locked, deadlocks
//! retried) or `sqlite.rs` (the single writer). Both decide on the same snapshot row with
//! [`rule`] and carry out a rejection with the same statements ([`reroute`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Database as SqlxDatabase, Encode, Type, query::Query};
use waybill_proto::v1::{DispatchState, OrderStatus};
use waybill_service_kit::{
    db::{Backend, ChangeFeed, Database, Id, Instant},
    on_pool,
};

use super::{
    AuthenticatedReport, EnrolledKey, IngestStore, ReportOutcome, StoreError, postgres, sqlite,
};
use crate::domain::decision::{Decision, Effects, OrderSnapshot, decide};

const PARTNER_KEY: &str = "SELECT public_key, revoked_at FROM partner_keys \
                           WHERE partner_id = $1 AND key_id = $2";
const PURGE: &str = "DELETE FROM report_token_ids WHERE expires_at < $1";
const REJECT: &str = "INSERT INTO dispatch_rejections (order_id, partner_id, report_id, \
                      rejected_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
const REROUTE: &str = include_str!("sql/reroute.sql");

/// Reports in the services' database, Postgres or SQLite.
#[derive(Debug, Clone)]
pub struct SqlIngestStore {
    db: Backend,
    /// Commits announced in this process (SQLite has no `NOTIFY`; on Postgres the report's
    /// transaction `NOTIFY`s itself).
    feed: ChangeFeed,
}

impl SqlIngestStore {
    /// A store on `db` (already migrated).
    pub fn new(db: &Database) -> Self {
        Self {
            db: db.backend().clone(),
            feed: db.feed().clone(),
        }
    }
}

/// An enrolled key.
#[derive(Debug, sqlx::FromRow)]
struct KeyRow {
    public_key: Vec<u8>,
    revoked_at: Option<Instant>,
}

/// What a report is decided on (see `sql/snapshot.*.sql`).
#[derive(Debug, sqlx::FromRow)]
pub(super) struct SnapshotRow {
    status: String,
    routed_partner: Option<String>,
    dispatch_state: Option<String>,
    rejected: bool,
    earlier_same_order: Option<bool>,
    fresh: bool,
    /// SQLite only (a lease written into the row); on Postgres the lease is the row's lock,
    /// which the report's transaction waits for.
    #[sqlx(default)]
    in_flight: bool,
}

/// What the report's transaction does next.
pub(super) enum Ruling {
    /// Roll back and answer this.
    Refuse(ReportOutcome),
    /// Commit (the token id is spent even so: a token is accepted once) and answer this.
    Spend(ReportOutcome),
    /// Carry these effects out.
    Apply(Effects),
}

/// Lets [`decide`] rule on `row` (`None`: no such order).
pub(super) fn rule(
    row: Option<SnapshotRow>,
    report: &AuthenticatedReport,
) -> Result<Ruling, StoreError> {
    let Some(row) = row else {
        return Ok(Ruling::Refuse(ReportOutcome::NotRouted));
    };
    let snapshot = OrderSnapshot {
        status: OrderStatus::from_short_name(&row.status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown order status {:?}", row.status)))?,
        routed_partner: row.routed_partner,
        dispatch_state: row
            .dispatch_state
            .map(|name| {
                DispatchState::from_short_name(&name)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown dispatch state {name:?}")))
            })
            .transpose()?,
        rejected_by_reporter: row.rejected,
        earlier_report_same_order: row.earlier_same_order,
        token_id_fresh: row.fresh,
        dispatch_in_flight: row.in_flight,
    };
    Ok(
        match decide(
            &snapshot,
            &report.partner_id,
            report.status,
            !report.tracking_id.is_empty(),
        ) {
            Decision::Apply(effects) => Ruling::Apply(effects),
            Decision::NotRouted => Ruling::Refuse(ReportOutcome::NotRouted),
            Decision::InFlight => Ruling::Refuse(ReportOutcome::InFlight),
            Decision::Replayed => Ruling::Refuse(ReportOutcome::Replayed),
            Decision::ReportIdReused => Ruling::Refuse(ReportOutcome::ReportIdReused),
            Decision::Duplicate => Ruling::Spend(ReportOutcome::Duplicate),
        },
    )
}

/// A rejection, to run inside the report's transaction: the partner is remembered as having
/// refused the order, and the dispatch row goes back to routing (the same statements on both
/// backends).
pub(super) fn reroute<'q, DB>(
    report: &'q AuthenticatedReport,
    now: DateTime<Utc>,
) -> [Query<'q, DB, <DB as SqlxDatabase>::Arguments<'q>>; 2]
where
    DB: SqlxDatabase,
    Id: Encode<'q, DB> + Type<DB>,
    Instant: Encode<'q, DB> + Type<DB>,
    &'q str: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
{
    [
        sqlx::query(REJECT)
            .bind(Id(report.order_id))
            .bind(report.partner_id.as_str())
            .bind(report.report_id.as_str())
            .bind(Instant(now)),
        sqlx::query(REROUTE)
            .bind(Id(report.order_id))
            .bind(report.partner_id.as_str())
            .bind(Instant(now))
            .bind(rejection_note(&report.partner_id, &report.report_id)),
    ]
}

/// The dispatch row's last error after a rejection: operators see who refused.
fn rejection_note(partner_id: &str, report_id: &str) -> String {
    format!("rejected by partner {partner_id} (report {report_id}); routing to the next partner")
}

#[async_trait]
impl IngestStore for SqlIngestStore {
    async fn partner_key(
        &self,
        partner_id: &str,
        key_id: &str,
    ) -> Result<Option<EnrolledKey>, StoreError> {
        let row: Option<KeyRow> = on_pool!(&self.db, |pool| {
            sqlx::query_as(PARTNER_KEY)
                .bind(partner_id)
                .bind(key_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|row| EnrolledKey {
            public_key: row.public_key,
            revoked_at: row.revoked_at.map(Into::into),
        }))
    }

    async fn record_report(
        &self,
        report: &AuthenticatedReport,
        now: DateTime<Utc>,
    ) -> Result<ReportOutcome, StoreError> {
        match &self.db {
            Backend::Postgres(pool) => postgres::record_report(pool, report, now).await,
            Backend::Sqlite(pool) => sqlite::record_report(pool, &self.feed, report, now).await,
        }
    }

    async fn purge_token_ids(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(on_pool!(&self.db, |pool| {
            sqlx::query(PURGE)
                .bind(Instant(now))
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }
}
