//! The dispatch row's moves made outside the relay, in one place. The relay's own moves (send,
//! retry, re-send, `DEAD`, `UNROUTABLE`, `UNACKNOWLEDGED`) are decided in the dispatcher's
//! `domain/cycle` and listed in its state-machine table; these are the others:
//!
//! | who | from | to | statement |
//! | --- | --- | --- | --- |
//! | StatusIngest: a report from the routed partner that confirms the handover (`RECEIVED_BY_PARTNER` or a later status) | any but `ACKNOWLEDGED` | `ACKNOWLEDGED`: deadline and lease cleared | [`ACKNOWLEDGE`]; the same [`ACKNOWLEDGED_SET`] inside StatusIngest's one-statement batch writes on Postgres (a test there holds them to it) |
//! | StatusIngest: `REJECTED_BY_PARTNER` from the routed partner | any | `PENDING`: partner and route cleared, fresh budget, due now, the rejection as `last_error` | [`REROUTE`] |
//! | DispatchAdmin `RetryDispatches` (an operator) | `RETRYING`, `DEAD`, `UNROUTABLE`, `UNACKNOWLEDGED`, not under a live lease | `PENDING`: fresh budget, due at its place in the replay's spread | decided in the dispatcher's `domain/cycle/replay.rs` (in its state-machine table), written by its `store/sql/replay.*.sql` |
//!
//! Clearing the lease when acknowledging fences out a relay batch holding the row: its record
//! step matches on the lease it took, so a re-send in flight cannot put the row back to `SENT`.
//! Every writer of an order's history or dispatch row locks the dispatch row first (the lock
//! order in `docs/architecture.md`, "Shared tables").

/// The `SET` list of the move to `ACKNOWLEDGED` (without `updated_at`), as every statement
/// making it writes it.
macro_rules! acknowledged_set {
    () => {
        "state = 'ACKNOWLEDGED', ack_due_at = NULL, lease_owner = NULL, lease_expires_at = NULL, batch_id = NULL"
    };
}

/// See [`acknowledged_set`]: what a statement moving a row to `ACKNOWLEDGED` sets.
pub const ACKNOWLEDGED_SET: &str = acknowledged_set!();

/// Order `$1`'s dispatch row to partner `$2` → `ACKNOWLEDGED` at `$3` (once: an acknowledged
/// row is left alone). Both backends.
pub const ACKNOWLEDGE: &str = concat!(
    "UPDATE dispatch SET ",
    acknowledged_set!(),
    ", updated_at = $3 WHERE order_id = $1 AND partner_id = $2 AND state <> 'ACKNOWLEDGED'"
);

/// A rejection: order `$1`'s dispatch row to partner `$2` → `PENDING` at `$3` with note `$4`.
/// Both backends.
pub const REROUTE: &str = include_str!("dispatch_moves/reroute.sql");

/// Whether `statement` sets exactly [`ACKNOWLEDGED_SET`] (whitespace aside): for tests that
/// hold a backend's own statements to the one move.
pub fn sets_acknowledged(statement: &str) -> bool {
    let squeeze = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    squeeze(statement).contains(&squeeze(ACKNOWLEDGED_SET))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_single_row_acknowledgement_sets_the_shared_list() {
        assert!(sets_acknowledged(ACKNOWLEDGE));
        assert!(sets_acknowledged(
            "UPDATE dispatch\n  SET state = 'ACKNOWLEDGED', ack_due_at = NULL,\n lease_owner = NULL, lease_expires_at = NULL,   batch_id = NULL"
        ));
        assert!(!sets_acknowledged(
            "UPDATE dispatch SET state = 'ACKNOWLEDGED', ack_due_at = NULL"
        ));
    }

    #[test]
    fn a_rejection_clears_partner_route_budget_and_lease() {
        for column in [
            "state = 'PENDING'",
            "partner_id = NULL",
            "route_id = NULL",
            "attempts = 0",
            "resends = 0",
            "lease_owner = NULL",
            "ack_due_at = NULL",
        ] {
            assert!(REROUTE.contains(column), "{column}");
        }
    }
}
