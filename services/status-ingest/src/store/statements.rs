//! What both backends' batch transactions share (`postgres.rs`, `sqlite.rs`): the savepoint
//! each report is kept under ([`Savepoint`]), the snapshot row a report is decided on and the
//! ruling on it ([`rule`]), the batch's head and rest ([`split`]), the statements that carry out
//! a rejection ([`reroute`]), and who is woken at commit ([`Woken`]).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::{Database as SqlxDatabase, Encode, Type, query::Query};
use uuid::Uuid;
use waybill_proto::v1::{DispatchState, OrderStatus};
use waybill_service_kit::db::{Id, Instant, dispatch_moves};

use super::{
    error::StoreError,
    model::{AuthenticatedReport, InBatch, ReportOutcome},
};
use crate::domain::decision::{Decision, Effects, OrderSnapshot, decide};

const REJECT: &str = "INSERT INTO dispatch_rejections (order_id, partner_id, report_id, \
                      rejected_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";

/// The savepoint each report of a batch is recorded under, one name reused: opening the next
/// releases the one before in the same round trip. (`COMMIT` releases the last.)
#[derive(Debug, Default)]
pub(super) struct Savepoint {
    open: bool,
}

impl Savepoint {
    /// Undoes what the current report did; the savepoint stays open.
    pub(super) const ROLLBACK: &'static str = "ROLLBACK TO SAVEPOINT report";

    /// The statement that opens the next report's savepoint.
    pub(super) fn next(&mut self) -> &'static str {
        self.next_with(
            "SAVEPOINT report",
            "RELEASE SAVEPOINT report; SAVEPOINT report",
        )
    }

    /// `first` for the first report, `next` for every later one: what opens the next report's
    /// savepoint, as `"SAVEPOINT report"` and `"RELEASE SAVEPOINT report; SAVEPOINT report"`
    /// begin with what follows them.
    pub(super) fn next_with(&mut self, first: &'static str, next: &'static str) -> &'static str {
        if std::mem::replace(&mut self.open, true) {
            next
        } else {
            first
        }
    }
}

/// Where a report's savepoint goes after it was decided.
pub(super) enum Step {
    /// Keep its writes (accepted, or a duplicate whose token id is spent) and answer this.
    Keep(ReportOutcome),
    /// Roll back to the savepoint (refused) and answer this.
    Undo(ReportOutcome),
}

/// Why applying a report inside its savepoint stopped.
pub(super) enum Applying {
    /// A statement failed.
    Sql(sqlx::Error),
    /// The snapshot could not be read.
    Store(StoreError),
}

impl From<sqlx::Error> for Applying {
    fn from(error: sqlx::Error) -> Self {
        Self::Sql(error)
    }
}

impl From<StoreError> for Applying {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

/// Who is woken when a batch commits: the orders whose history grew, and the relays if an order
/// went back to routing.
#[derive(Debug, Default)]
pub(super) struct Woken {
    pub(super) orders: Vec<Uuid>,
    pub(super) outbox: bool,
}

impl Woken {
    /// Notes what `report` did.
    pub(super) fn note(&mut self, report: &AuthenticatedReport, result: &InBatch) {
        if let InBatch::Decided(ReportOutcome::Accepted { effects, .. }) = result {
            if !self.orders.contains(&report.order_id) {
                self.orders.push(report.order_id);
            }
            self.outbox |= effects.reroute;
        }
    }

    /// Nobody to wake.
    pub(super) fn is_empty(&self) -> bool {
        self.orders.is_empty() && !self.outbox
    }
}

/// What a report is decided on (see `sql/snapshot.*.sql`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct SnapshotRow {
    pub(super) status: String,
    /// When the order was placed (`orders.placed_at`).
    pub(super) placed_at: Option<Instant>,
    pub(super) routed_partner: Option<String>,
    pub(super) dispatch_state: Option<String>,
    pub(super) rejected: bool,
    pub(super) earlier_same_order: Option<bool>,
    pub(super) fresh: bool,
    pub(super) key_enrolled: bool,
    pub(super) key_revoked_at: Option<Instant>,
    /// SQLite only (a lease written into the row); on Postgres the lease is the row's lock,
    /// which the report's transaction waits for.
    #[sqlx(default)]
    pub(super) in_flight: bool,
}

/// Splits a batch into its head — the first report of each order, token id and report id, which
/// can be decided together on one snapshot since none depends on another — and the rest, each of
/// which shares one of those with a report before it (or cannot go with the head, `together`
/// says) and is recorded after the head, alone under its savepoint, seeing what the head did.
/// Indexes into `reports`, in order.
pub(super) fn split(
    reports: &[AuthenticatedReport],
    together: impl Fn(&AuthenticatedReport) -> bool,
) -> (Vec<usize>, Vec<usize>) {
    let mut orders = HashSet::new();
    let mut token_ids = HashSet::new();
    let mut report_ids = HashSet::new();
    let (mut head, mut rest) = (Vec::new(), Vec::new());
    for (index, report) in reports.iter().enumerate() {
        let token_id = (report.partner_id.as_str(), report.token_id.as_str());
        let report_id = (report.partner_id.as_str(), report.report_id.as_str());
        let after_another = !orders.insert(report.order_id)
            | !token_ids.insert(token_id)
            | !report_ids.insert(report_id);
        if after_another || !together(report) {
            rest.push(index);
        } else {
            head.push(index);
        }
    }
    (head, rest)
}

/// What the report's transaction does next.
pub(super) enum Ruling {
    /// Roll back and answer this.
    Refuse(ReportOutcome),
    /// Commit (the token id is spent even so: a token is accepted once) and answer this.
    Spend(ReportOutcome),
    /// Carry these effects out.
    Apply(Acceptance),
}

/// A report to accept: its effects, and what its answer will say.
#[derive(Debug, Clone, Copy)]
pub(super) struct Acceptance {
    /// What accepting it changes.
    pub(super) effects: Effects,
    /// When the order was placed, if accepting this report is what acknowledges the handover:
    /// the dispatch row moves to `ACKNOWLEDGED` with it (the statements move it only from
    /// another state, and only for the partner it is routed to, which an accepted report's is).
    acknowledges_placed_at: Option<DateTime<Utc>>,
}

impl Acceptance {
    /// The answer once the report's event is at `sequence`, recorded at `at`.
    pub(super) fn accepted(self, sequence: i64, at: DateTime<Utc>) -> ReportOutcome {
        ReportOutcome::Accepted {
            sequence,
            effects: self.effects,
            // A clock that stepped back since the placing reads as no time at all.
            placed_to_acknowledged: self
                .acknowledges_placed_at
                .map(|placed| (at - placed).to_std().unwrap_or_default()),
        }
    }
}

/// Lets [`decide`] rule on `row` (`None`: no such order).
pub(super) fn rule(
    row: Option<SnapshotRow>,
    report: &AuthenticatedReport,
) -> Result<Ruling, StoreError> {
    let Some(row) = row else {
        return Ok(Ruling::Refuse(ReportOutcome::NotRouted));
    };
    // The token was verified with a key the service remembers; whether it still may sign is
    // decided here, before anything else.
    if !row.key_enrolled || row.key_revoked_at.is_some() {
        return Ok(Ruling::Refuse(ReportOutcome::KeyRevoked(
            row.key_revoked_at.map(Into::into),
        )));
    }
    let placed_at = row.placed_at.map(DateTime::from);
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
            Decision::Apply(effects) => Ruling::Apply(Acceptance {
                effects,
                acknowledges_placed_at: placed_at.filter(|_| {
                    effects.acknowledge
                        && snapshot.dispatch_state != Some(DispatchState::Acknowledged)
                }),
            }),
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
        sqlx::query(dispatch_moves::REROUTE)
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
