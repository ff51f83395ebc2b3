//! An operator's replay (`RetryDispatches`): the dispatch state machine's move of a row that
//! needs an operator back to `PENDING`, with a fresh budget, due at a time this module spreads.
//!
//! | from | guard | to |
//! | --- | --- | --- |
//! | `RETRYING`, `DEAD`, `UNROUTABLE`, `UNACKNOWLEDGED` | not under a live lease | `PENDING`: attempts and resends 0, handover deadline cleared, due at its place in the spread |
//!
//! A replay takes at most `max_orders` rows (the oldest first) and spaces their due times
//! evenly over `spread` from now, so a replay of thousands of dead orders reaches the partner
//! as a stream, not at once. The store carries out the rows [`plan`] returns in one statement
//! that checks the guard again, row by row, as it writes.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;
use waybill_proto::v1::DispatchState;

/// States an operator may send back to `PENDING`.
pub const RETRYABLE_STATES: [DispatchState; 4] = [
    DispatchState::Retrying,
    DispatchState::Dead,
    DispatchState::Unroutable,
    DispatchState::Unacknowledged,
];

/// Orders one replay takes when the request names no cap.
pub const DEFAULT_MAX_ORDERS: u32 = 1_000;
/// The largest cap a request may name.
pub const MAX_ORDERS_CEILING: u32 = 10_000;

/// The longest window a replay's due times may be spread over.
pub fn max_spread() -> Duration {
    Duration::hours(24)
}

/// How much one replay takes, and over how long its rows become due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayBounds {
    /// Rows at most (1 to [`MAX_ORDERS_CEILING`]).
    pub max_orders: u32,
    /// The window the due times are spread over (zero: all due now).
    pub spread: Duration,
}

impl Default for ReplayBounds {
    fn default() -> Self {
        Self {
            max_orders: DEFAULT_MAX_ORDERS,
            spread: Duration::zero(),
        }
    }
}

/// Why a row cannot be replayed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReplayable {
    /// Its state is not one an operator may replay.
    State(DispatchState),
    /// A dispatcher holds it until then.
    Leased(DateTime<Utc>),
}

/// The guard of the move: `state` is retryable and no live lease holds the row at `now`.
pub fn replayable(
    state: DispatchState,
    lease_expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), NotReplayable> {
    if !RETRYABLE_STATES.contains(&state) {
        return Err(NotReplayable::State(state));
    }
    match lease_expires_at {
        Some(until) if until > now => Err(NotReplayable::Leased(until)),
        _ => Ok(()),
    }
}

/// One row as the replay leaves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The order.
    pub order_id: Uuid,
    /// Its next state (`PENDING`).
    pub state: DispatchState,
    /// Failed sends: a fresh budget.
    pub attempts: i32,
    /// Re-sends: a fresh budget.
    pub resends: i32,
    /// When the relay takes it.
    pub next_attempt_at: DateTime<Utc>,
}

/// What a replay does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayPlan {
    /// The rows, in the order they become due.
    pub rows: Vec<Replayed>,
    /// Rows that matched (replayable now), taken or not.
    pub matched: i64,
    /// More matched than the cap: only the first `max_orders` were taken.
    pub truncated: bool,
}

/// The replay of `candidates` (replayable rows, oldest first; `matched` of them in all, of
/// which the store may have passed only the first `bounds.max_orders`) at `now`: the first
/// `max_orders` of them, the i-th of n due at `now + spread * i / n`.
pub fn plan(
    candidates: &[Uuid],
    matched: i64,
    bounds: &ReplayBounds,
    now: DateTime<Utc>,
) -> ReplayPlan {
    let cap = usize::try_from(bounds.max_orders).unwrap_or(usize::MAX);
    let taken = &candidates[..candidates.len().min(cap)];
    let count = i64::try_from(taken.len()).unwrap_or(i64::MAX).max(1);
    let step_micros = bounds.spread.num_microseconds().unwrap_or(0).max(0) / count;
    let rows = taken
        .iter()
        .zip(0_i64..)
        .map(|(&order_id, place)| Replayed {
            order_id,
            state: DispatchState::Pending,
            attempts: 0,
            resends: 0,
            next_attempt_at: now + Duration::microseconds(step_micros.saturating_mul(place)),
        })
        .collect::<Vec<_>>();
    let matched = matched.max(i64::try_from(candidates.len()).unwrap_or(i64::MAX));
    ReplayPlan {
        truncated: matched > i64::try_from(rows.len()).unwrap_or(i64::MAX),
        rows,
        matched,
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 6, 10, 0, 0)
            .single()
            .unwrap_or_default()
    }

    fn ids(n: usize) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::now_v7()).collect()
    }

    #[test]
    fn every_operator_state_is_replayable_unless_leased() {
        for state in RETRYABLE_STATES {
            assert_eq!(replayable(state, None, now()), Ok(()));
            assert_eq!(
                replayable(state, Some(now() - Duration::seconds(1)), now()),
                Ok(()),
                "an expired lease holds nothing"
            );
            let until = now() + Duration::seconds(30);
            assert_eq!(
                replayable(state, Some(until), now()),
                Err(NotReplayable::Leased(until))
            );
        }
        for state in [
            DispatchState::Pending,
            DispatchState::Sent,
            DispatchState::Acknowledged,
        ] {
            assert_eq!(
                replayable(state, None, now()),
                Err(NotReplayable::State(state))
            );
        }
    }

    #[test]
    fn a_replay_makes_pending_rows_with_a_fresh_budget_due_now_by_default() {
        let orders = ids(3);
        let plan = plan(&orders, 3, &ReplayBounds::default(), now());
        assert!(!plan.truncated);
        assert_eq!(plan.matched, 3);
        for (row, id) in plan.rows.iter().zip(&orders) {
            assert_eq!(
                row,
                &Replayed {
                    order_id: *id,
                    state: DispatchState::Pending,
                    attempts: 0,
                    resends: 0,
                    next_attempt_at: now(),
                }
            );
        }
    }

    #[test]
    fn due_times_are_spread_evenly_oldest_first() {
        let orders = ids(4);
        let bounds = ReplayBounds {
            max_orders: 10,
            spread: Duration::minutes(20),
        };
        let due: Vec<_> = plan(&orders, 4, &bounds, now())
            .rows
            .into_iter()
            .map(|row| (row.order_id, row.next_attempt_at))
            .collect();
        let expected: Vec<_> = orders
            .iter()
            .zip([0, 5, 10, 15])
            .map(|(id, minutes)| (*id, now() + Duration::minutes(minutes)))
            .collect();
        assert_eq!(due, expected);
    }

    #[test]
    fn more_than_the_cap_is_truncated_and_says_so() {
        let orders = ids(5);
        let bounds = ReplayBounds {
            max_orders: 2,
            spread: Duration::seconds(10),
        };
        let plan = plan(&orders, 12, &bounds, now());
        assert_eq!(
            plan.rows.iter().map(|r| r.order_id).collect::<Vec<_>>(),
            orders[..2]
        );
        assert_eq!(plan.rows[1].next_attempt_at, now() + Duration::seconds(5));
        assert!(plan.truncated);
        assert_eq!(plan.matched, 12);
    }

    #[test]
    fn nothing_to_replay_is_an_empty_plan() {
        let plan = plan(&[], 0, &ReplayBounds::default(), now());
        assert!(plan.rows.is_empty());
        assert!(!plan.truncated);
    }
}
