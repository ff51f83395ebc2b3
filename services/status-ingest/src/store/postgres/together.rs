//! The head of a batch recorded in one statement (`sql/record_many.pg.sql`): reports that share
//! no order, token id or report id, and are not rejections. The statement locks the rows, reads
//! what [`decide`] needs, and carries out what it would: the status-dependent effects of each
//! report are computed here with [`decide`] for every status the order may have, and the
//! statement applies the gate that picks accept / duplicate / refuse. Each report is then ruled
//! on again here from the snapshot the statement returns, and a disagreement is reported per
//! report (see `record_batch` for what becomes of it).
//!
//! One round trip and one statement to plan for the whole head, whatever its size.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use waybill_proto::v1::{DispatchState, OrderStatus};
use waybill_service_kit::{clock::SharedClock, db::Instant};

use super::super::{
    error::StoreError,
    model::{AuthenticatedReport, InBatch, ReportOutcome},
    statements::{Applying, Ruling, SnapshotRow, rule},
};
use crate::domain::decision::{Decision, OrderSnapshot, decide};

pub(super) const RECORD_MANY: &str = include_str!("../sql/record_many.pg.sql");

/// Every status an order can have.
const STATUSES: [OrderStatus; 7] = [
    OrderStatus::Placed,
    OrderStatus::SentToPartner,
    OrderStatus::ReceivedByPartner,
    OrderStatus::Shipped,
    OrderStatus::Delivered,
    OrderStatus::Exception,
    OrderStatus::RejectedByPartner,
];

/// Whether a report can be recorded with the head (a rejection's statements go one at a time).
pub(super) fn can_go_together(report: &AuthenticatedReport) -> bool {
    report.status != OrderStatus::RejectedByPartner
}

/// What the statement says of one report.
#[derive(Debug, sqlx::FromRow)]
struct HeadRow {
    present: bool,
    locked: bool,
    status: Option<String>,
    placed_at: Option<DateTime<Utc>>,
    routed_partner: Option<String>,
    dispatch_state: Option<String>,
    rejected: bool,
    earlier_same_order: Option<bool>,
    key_enrolled: bool,
    key_revoked_at: Option<DateTime<Utc>>,
    taken: bool,
    seen: bool,
    seq: Option<i64>,
}

/// The effects of accepting each report for every status its order may have, as the
/// statement's columns (`$14`-`$19`).
#[derive(Debug, Default)]
struct EffectTable {
    position: Vec<i64>,
    current: Vec<&'static str>,
    order_status: Vec<&'static str>,
    record_tracking: Vec<bool>,
    acknowledge: Vec<bool>,
    needs_review: Vec<bool>,
}

impl EffectTable {
    fn of(head: &[&AuthenticatedReport]) -> Self {
        let mut table = Self::default();
        for (position, report) in (1_i64..).zip(head) {
            for current in STATUSES {
                // What decide() answers once every check passed; the acknowledgement is written
                // only if the dispatch row is not acknowledged already.
                let snapshot = OrderSnapshot {
                    status: current,
                    routed_partner: Some(report.partner_id.clone()),
                    dispatch_state: Some(DispatchState::Sent),
                    rejected_by_reporter: false,
                    earlier_report_same_order: None,
                    token_id_fresh: true,
                    dispatch_in_flight: false,
                };
                let has_tracking = !report.tracking_id.is_empty();
                if let Decision::Apply(effects) =
                    decide(&snapshot, &report.partner_id, report.status, has_tracking)
                {
                    table.position.push(position);
                    table.current.push(current.short_name());
                    table.order_status.push(effects.order_status.short_name());
                    table.record_tracking.push(effects.record_tracking);
                    table.acknowledge.push(effects.acknowledge);
                    table.needs_review.push(effects.needs_review);
                }
            }
        }
        table
    }
}

/// Records `head` in one statement at the clock's time (see the module docs): what was done
/// with each report, in order, or how the statement disagreed with [`decide`] on it. `Err`: the
/// statement failed (and did nothing), or answered the wrong number of rows.
pub(super) async fn record(
    conn: &mut PgConnection,
    clock: &SharedClock,
    head: &[&AuthenticatedReport],
) -> Result<Vec<Result<InBatch, StoreError>>, Applying> {
    let effects = EffectTable::of(head);
    let texts = |field: fn(&AuthenticatedReport) -> &str| -> Vec<&str> {
        head.iter().map(|report| field(report)).collect()
    };
    // The rows are locked by the time this is written: the report is true but for the commit.
    let at = clock.now();
    let rows: Vec<HeadRow> = sqlx::query_as(RECORD_MANY)
        .bind(head.iter().map(|r| r.order_id).collect::<Vec<_>>())
        .bind(texts(|r| &r.partner_id))
        .bind(texts(|r| &r.report_id))
        .bind(texts(|r| &r.token_id))
        .bind(
            head.iter()
                .map(|r| r.token_id_kept_until)
                .collect::<Vec<_>>(),
        )
        .bind(texts(|r| &r.key_id))
        .bind(texts(|r| r.status.short_name()))
        .bind(texts(|r| &r.tracking_id))
        .bind(texts(|r| &r.detail))
        .bind(head.iter().map(|r| r.occurred_at).collect::<Vec<_>>())
        .bind(texts(|r| &r.detail_code))
        .bind(head.iter().map(|r| r.action_required).collect::<Vec<_>>())
        .bind(at)
        .bind(&effects.position)
        .bind(&effects.current)
        .bind(&effects.order_status)
        .bind(&effects.record_tracking)
        .bind(&effects.acknowledge)
        .bind(&effects.needs_review)
        .fetch_all(&mut *conn)
        .await?;
    if rows.len() != head.len() {
        return Err(StoreError::Corrupt(format!(
            "the batch statement answered {} rows for {} reports",
            rows.len(),
            head.len()
        ))
        .into());
    }
    Ok(head
        .iter()
        .zip(rows)
        .map(|(report, row)| ruled(report, row, at))
        .collect())
}

/// What the statement did with `report`, checked against [`rule`] on the snapshot it returned.
fn ruled(
    report: &AuthenticatedReport,
    row: HeadRow,
    at: DateTime<Utc>,
) -> Result<InBatch, StoreError> {
    let untouched = !row.taken && row.seq.is_none();
    if !row.present && untouched {
        // No such order: refused as another partner's order is.
        return Ok(InBatch::Decided(ReportOutcome::NotRouted));
    }
    if !row.locked && untouched {
        return Ok(InBatch::LeftOut);
    }
    let mut snapshot = SnapshotRow {
        status: row.status.unwrap_or_default(),
        placed_at: row.placed_at.map(Instant),
        routed_partner: row.routed_partner,
        dispatch_state: row.dispatch_state,
        rejected: row.rejected,
        earlier_same_order: row.earlier_same_order,
        fresh: true,
        key_enrolled: row.key_enrolled,
        key_revoked_at: row.key_revoked_at.map(Instant),
        // The rows are locked: no relay batch holds them.
        in_flight: false,
    };
    // The statement tries to take the token id exactly when the report would be kept were the
    // token id new; otherwise it only looked whether the token id was seen.
    let tried = !matches!(rule(Some(snapshot.clone()), report)?, Ruling::Refuse(_));
    snapshot.fresh = if tried { row.taken } else { !row.seen };
    match (rule(Some(snapshot), report)?, row.taken, row.seq) {
        (Ruling::Apply(acceptance), true, Some(sequence)) => {
            Ok(InBatch::Decided(acceptance.accepted(sequence, at)))
        }
        (Ruling::Spend(outcome), true, None) | (Ruling::Refuse(outcome), false, None) => {
            Ok(InBatch::Decided(outcome))
        }
        (ruling, taken, sequence) => Err(StoreError::Corrupt(format!(
            "the batch statement (token id taken: {taken}, event: {sequence:?}) and the decision \
             ({}) disagree on report {:?} of order {}",
            match ruling {
                Ruling::Apply(_) => "accept",
                Ruling::Spend(_) => "duplicate",
                Ruling::Refuse(_) => "refuse",
            },
            report.report_id,
            report.order_id
        ))),
    }
}
