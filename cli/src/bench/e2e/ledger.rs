//! The ledger of one step: where every order it placed is at the cut-off, from the database
//! (one query joining orders, dispatch rows and history for the step's idempotency keys),
//! checked against what the observers saw. It balances when
//!
//! placed = received + rejected and rerouted + dead + unroutable + unacknowledged + in flight
//!
//! and any order in none of these is **lost**: placed but not in the database, without a
//! dispatch row, acknowledged without `RECEIVED_BY_PARTNER`, or sent with no
//! `RECEIVED_BY_PARTNER` recorded while the loop had gone quiet (no order took any step for the
//! quiet window: nothing was going to move it before its handover deadline). A lost order, an
//! order in the database under the step's keys that the step never placed, an order the
//! adapter answered twice (taken into effect twice) or one recorded received that the adapter
//! never answered each **void** the run: its figures then mean nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;
use waybill_service_kit::{
    db::{Database, Id, Instant},
    on_pool,
};

use super::{
    load::Placed,
    timeline::{Mark, Track},
};

/// Each order of the step's keys: its dispatch state, when `RECEIVED_BY_PARTNER` was recorded,
/// how many rejections its history holds and how often the relay re-sent it.
const STEP_ORDERS: &str = "SELECT o.id, o.idempotency_key, d.state, \
         MIN(CASE WHEN e.status = 'RECEIVED_BY_PARTNER' THEN e.recorded_at END), \
         SUM(CASE WHEN e.status = 'REJECTED_BY_PARTNER' THEN 1 ELSE 0 END), \
         CAST(MAX(d.resends) AS BIGINT) \
     FROM orders o \
     LEFT JOIN dispatch d ON d.order_id = o.id \
     LEFT JOIN order_status_events e ON e.order_id = o.id \
     WHERE o.idempotency_key LIKE $1 \
     GROUP BY o.id, o.idempotency_key, d.state";

/// Reasons kept to print (the counts say how many there were).
const REASONS: usize = 5;

/// An order as the database holds it at the cut-off.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct DbOrder {
    pub(super) id: Uuid,
    pub(super) idempotency_key: String,
    pub(super) state: Option<String>,
    pub(super) received_at: Option<DateTime<Utc>>,
    pub(super) rejections: i64,
    /// Copies the relay re-sent after the partner's handover deadline passed.
    pub(super) resends: i64,
}

/// Every order whose idempotency key starts with `prefix` (no `%` or `_` in it).
pub(super) async fn read(db: &Database, prefix: &str) -> anyhow::Result<Vec<DbOrder>> {
    type Row = (
        Id,
        String,
        Option<String>,
        Option<Instant>,
        Option<i64>,
        Option<i64>,
    );
    let rows: Vec<Row> = on_pool!(db.backend(), |pool| {
        sqlx::query_as(STEP_ORDERS)
            .bind(format!("{prefix}%"))
            .fetch_all(pool)
            .await?
    });
    Ok(rows
        .into_iter()
        .map(
            |(id, key, state, received_at, rejections, resends)| DbOrder {
                id: id.0,
                idempotency_key: key,
                state,
                received_at: received_at.map(|at| at.0),
                rejections: rejections.unwrap_or(0),
                resends: resends.unwrap_or(0),
            },
        )
        .collect())
}

/// Why the step's wait for its orders ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum CutOff {
    /// Every order's report was confirmed.
    AllConfirmed,
    /// No order took any step for the quiet window.
    Quiet,
    /// The drain timeout ran out while orders were still moving.
    Timeout,
}

/// The step's ledger (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(super) struct Ledger {
    pub(super) placed: u64,
    pub(super) received: u64,
    pub(super) rejected_rerouted: u64,
    pub(super) dead: u64,
    pub(super) unroutable: u64,
    pub(super) unacknowledged: u64,
    pub(super) in_flight: u64,
    pub(super) lost: u64,
    /// Orders whose `PlaceOrder` failed for the client yet were stored (not counted placed).
    pub(super) placed_despite_error: u64,
    /// Orders under the step's keys that it never placed.
    pub(super) unknown: u64,
    /// Orders the adapter answered more than once.
    pub(super) answered_twice: u64,
    /// Orders recorded received that the adapter never answered.
    pub(super) received_without_answer: u64,
    /// Whether the adapter's answers were seen (an observer in this process): without them,
    /// answered twice and received without an answer cannot be checked.
    pub(super) answers_checked: bool,
    /// Copies the relay re-sent (a partner's handover deadline passed), over the placed orders.
    pub(super) resends: u64,
    /// Placed orders re-sent at least once.
    pub(super) resent_orders: u64,
    /// placed = received + rejected and rerouted + dead + unroutable + unacknowledged + in
    /// flight, and nothing under the step's keys that it did not place.
    pub(super) balanced: bool,
    pub(super) void: bool,
    /// The first few orders that voided it, and why.
    pub(super) void_reasons: Vec<String>,
}

impl Ledger {
    /// The equation in words, for people.
    pub(super) fn equation(&self) -> String {
        format!(
            "placed {} = received {} + rejected and rerouted {} + dead {} + unroutable {} + \
             unacknowledged {} + in flight {}{}",
            self.placed,
            self.received,
            self.rejected_rerouted,
            self.dead,
            self.unroutable,
            self.unacknowledged,
            self.in_flight,
            if self.lost > 0 {
                format!(" + LOST {}", self.lost)
            } else {
                String::new()
            }
        )
    }

    fn void_because(&mut self, reason: String) {
        self.void = true;
        if self.void_reasons.len() < REASONS {
            self.void_reasons.push(reason);
        }
    }
}

/// The ledger, and when each placed order was recorded received.
pub(super) struct Reckoning {
    pub(super) ledger: Ledger,
    /// Aligned with the placed orders.
    pub(super) received_at: Vec<Option<DateTime<Utc>>>,
}

/// What the step placed (`placed`, with their `tracks`, in which the adapter's answers count
/// only if `answers_seen`; `failed`: the indexes of the calls that failed), against what the
/// database holds under its `prefix` at the cut-off.
#[allow(clippy::too_many_arguments)] // one call site, each argument a different fact
pub(super) fn reckon(
    placed: &[Placed],
    tracks: &[Option<Track>],
    answers_seen: bool,
    failed: &[u64],
    found: Vec<DbOrder>,
    prefix: &str,
    cut_off: CutOff,
    quiet: Duration,
) -> Reckoning {
    let mut ledger = Ledger {
        placed: placed.len() as u64,
        answers_checked: answers_seen,
        ..Ledger::default()
    };
    let mut by_id: std::collections::HashMap<Uuid, DbOrder> =
        found.into_iter().map(|order| (order.id, order)).collect();
    let mut received_at = Vec::with_capacity(placed.len());
    for (order, track) in placed.iter().zip(tracks) {
        let answers = track.map_or(0, |t| t.answers);
        if answers_seen && answers > 1 {
            ledger.answered_twice += 1;
            ledger.void_because(format!(
                "order {}: the adapter answered it {answers} times",
                order.id
            ));
        }
        let Some(stored) = by_id.remove(&order.id) else {
            ledger.lost += 1;
            ledger.void_because(format!("order {}: placed, not in the database", order.id));
            received_at.push(None);
            continue;
        };
        received_at.push(stored.received_at);
        let resends = u64::try_from(stored.resends).unwrap_or(0);
        ledger.resends += resends;
        ledger.resent_orders += u64::from(resends > 0);
        if stored.received_at.is_some() {
            ledger.received += 1;
            if answers_seen && answers == 0 {
                ledger.received_without_answer += 1;
                ledger.void_because(format!(
                    "order {}: RECEIVED_BY_PARTNER recorded, the adapter never answered",
                    order.id
                ));
            }
            continue;
        }
        let rejected = stored.rejections > 0;
        match (stored.state.as_deref(), cut_off) {
            (Some("DEAD"), _) => ledger.dead += 1,
            (Some("UNROUTABLE"), _) => ledger.unroutable += 1,
            (Some("UNACKNOWLEDGED"), _) => ledger.unacknowledged += 1,
            (Some("SENT"), CutOff::Quiet) => {
                ledger.lost += 1;
                let last = track.and_then(|t| t.last_step()).map_or("none", Mark::name);
                ledger.void_because(format!(
                    "order {}: SENT, no RECEIVED_BY_PARTNER recorded and no order moving for \
                     {} s (its last step: {last})",
                    order.id,
                    quiet.as_secs()
                ));
            }
            (Some("PENDING" | "RETRYING" | "SENT"), _) if rejected => {
                ledger.rejected_rerouted += 1;
            }
            (Some("PENDING" | "RETRYING" | "SENT"), _) => ledger.in_flight += 1,
            (state, _) => {
                ledger.lost += 1;
                ledger.void_because(format!(
                    "order {}: dispatch {}, no RECEIVED_BY_PARTNER",
                    order.id,
                    state.unwrap_or("row missing")
                ));
            }
        }
    }
    // What is left was stored under the step's keys without being counted placed.
    for stored in by_id.into_values() {
        let index = stored
            .idempotency_key
            .strip_prefix(prefix)
            .and_then(|index| index.parse::<u64>().ok());
        if index.is_some_and(|index| failed.contains(&index)) {
            ledger.placed_despite_error += 1;
        } else {
            ledger.unknown += 1;
            ledger.void_because(format!(
                "order {} ({}): in the database, never placed by this step",
                stored.id, stored.idempotency_key
            ));
        }
    }
    ledger.balanced = ledger.lost == 0 && ledger.unknown == 0;
    debug_assert_eq!(
        ledger.placed,
        ledger.received
            + ledger.rejected_rerouted
            + ledger.dead
            + ledger.unroutable
            + ledger.unacknowledged
            + ledger.in_flight
            + ledger.lost
    );
    Reckoning {
        ledger,
        received_at,
    }
}

#[cfg(test)]
mod tests;
