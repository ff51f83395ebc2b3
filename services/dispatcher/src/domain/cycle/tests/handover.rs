//! The handover deadline's behind-or-gone transitions (see `cycle/handover.rs`): an overdue
//! order's partner is asked about as [`Progress`]; the fixtures are the parent module's
//! (partner `a`: deadline 10 min, resend budget 2; [`overdue`]: sent one deadline ago to
//! partition 1 at offset 40).

use std::collections::HashMap;

use super::*;
use crate::domain::cycle::handover::{GroupProgress, PartitionProgress, judge};

/// Partner `a`'s group: `live` or not, partition 1 holding offsets 10..100, committed `at`.
fn group(live: bool, committed: Option<i64>) -> Progress {
    let mut progress = Progress::default();
    progress.insert(
        "a",
        GroupProgress {
            live,
            partitions: HashMap::from([(
                1,
                PartitionProgress {
                    low: 10,
                    high: 100,
                    committed,
                },
            )]),
        },
    );
    progress
}

/// Alive and 15 records short of the order (committed 25, the order at 40).
fn behind() -> Progress {
    group(true, Some(25))
}

fn plan_with(order: &LeasedOrder, progress: &Progress) -> Plan {
    plan(
        order,
        BatchKind::Overdue,
        &table(),
        &audit(),
        progress,
        now(),
    )
}

fn resend() -> Plan {
    Plan::Resend {
        partner: partner("a"),
    }
}

#[test]
fn a_live_group_that_has_not_read_the_order_yet_is_behind() {
    assert_eq!(
        plan_with(&overdue(0, 0), &behind()),
        Plan::Behind {
            partner: partner("a"),
            ahead: 15
        }
    );
    // Committed at the order's own offset: it is the next record read, not read yet.
    assert!(matches!(
        plan_with(&overdue(0, 0), &group(true, Some(40))),
        Plan::Behind { ahead: 0, .. }
    ));
    // Committed below what the log still holds: it reads from the log's start.
    assert!(matches!(
        plan_with(&overdue(0, 0), &group(true, Some(3))),
        Plan::Behind { ahead: 30, .. }
    ));
    // A re-send that is failing (attempts 1) waits too: the copy the broker took is on its way.
    assert!(matches!(
        plan_with(&overdue(1, 1), &behind()),
        Plan::Behind { .. }
    ));
}

#[test]
fn a_live_group_that_read_the_order_without_confirming_it_holds_it() {
    // Committed past the order: the SDK's inbox holds it with its report, which is on its way.
    assert_eq!(
        plan_with(&overdue(0, 0), &group(true, Some(41))),
        Plan::Behind {
            partner: partner("a"),
            ahead: 0
        }
    );
    // Read, even if the log no longer holds it (retention, or a broker that lost its log).
    let dropped = LeasedOrder {
        sent_position: Some(SentPosition {
            partition: 1,
            offset: 5,
        }),
        ..overdue(0, 0)
    };
    assert!(matches!(
        plan_with(&dropped, &group(true, Some(41))),
        Plan::Behind { ahead: 0, .. }
    ));
    // Held for the resend budget's worth of deadlines, then flagged without a copy.
    let long_ago = LeasedOrder {
        sent_at: Some(now() - Duration::minutes(30)),
        ..overdue(0, 0)
    };
    let plan = plan_with(&long_ago, &group(true, Some(41)));
    assert_eq!(
        plan,
        Plan::BehindTooLong {
            position: SentPosition {
                partition: 1,
                offset: 40
            },
            ahead: 0,
            read: true,
            deadlines: 3,
        }
    );
    let settled = settle_one(&long_ago, &plan, &ok());
    assert_eq!(settled.update.state, DispatchState::Unacknowledged);
    assert_eq!(
        settled.update.last_error.as_deref(),
        Some(
            "partner a did not confirm receipt: its consumers are alive and read the order \
             (partition 1, offset 40) but have not confirmed it in 3 handover deadlines"
        )
    );
}

#[test]
fn a_confirmation_wins_over_being_behind() {
    let confirmed = LeasedOrder {
        acknowledged: true,
        ..overdue(0, 0)
    };
    assert_eq!(plan_with(&confirmed, &behind()), Plan::Acknowledged);
}

#[test]
fn every_other_case_is_gone_and_follows_the_resend_rule() {
    let at = |offset: i64| LeasedOrder {
        sent_position: Some(SentPosition {
            partition: 1,
            offset,
        }),
        ..overdue(0, 0)
    };
    let other_partition = LeasedOrder {
        sent_position: Some(SentPosition {
            partition: 4,
            offset: 40,
        }),
        ..overdue(0, 0)
    };
    let no_position = LeasedOrder {
        sent_position: None,
        ..overdue(0, 0)
    };
    let no_sent_time = LeasedOrder {
        sent_at: None,
        ..overdue(0, 0)
    };
    let mut other_partner = Progress::default();
    other_partner.insert("b", GroupProgress::default());
    for (case, order, progress) in [
        ("no live members", overdue(0, 0), group(false, Some(25))),
        (
            "read, and no live members",
            overdue(0, 0),
            group(false, Some(41)),
        ),
        (
            "the broker did not tell",
            overdue(0, 0),
            Progress::default(),
        ),
        ("another partner's group only", overdue(0, 0), other_partner),
        ("its partition not asked about", other_partition, behind()),
        (
            "no longer in the log, never read (committed below it)",
            at(9),
            group(true, Some(5)),
        ),
        (
            "no longer in the log, never committed",
            at(9),
            group(true, None),
        ),
        // A group that never committed on the partition may read from its end (a client's
        // default `latest`): it would never reach the order, so it gets a copy.
        (
            "in the log, never committed",
            overdue(0, 0),
            group(true, None),
        ),
        ("beyond the log's end (broker lost it)", at(100), behind()),
        ("position not kept", no_position, behind()),
        ("send time unknown", no_sent_time, behind()),
    ] {
        assert_eq!(plan_with(&order, &progress), resend(), "{case}");
    }
    // Gone with the resend budget (2) spent: flagged, as before.
    assert_eq!(
        plan_with(&overdue(2, 0), &group(false, None)),
        Plan::Unacknowledged
    );
}

#[test]
fn behind_for_the_resend_budgets_worth_of_deadlines_is_flagged_without_a_copy() {
    let sent = |resends: i32, deadlines_ago: i32| LeasedOrder {
        sent_at: Some(now() - Duration::minutes(10) * deadlines_ago),
        ..overdue(resends, 0)
    };
    // Budget 2: as many deadlines as re-sends would have taken (resends + deadlines since the
    // latest send) — one more and today's rule would have flagged it.
    for (resends, deadlines_ago) in [(0, 1), (0, 2), (1, 1)] {
        assert!(
            matches!(
                plan_with(&sent(resends, deadlines_ago), &behind()),
                Plan::Behind { .. }
            ),
            "resends {resends}, sent {deadlines_ago} deadlines ago"
        );
    }
    for (resends, deadlines_ago) in [(0, 3), (1, 2), (2, 1)] {
        assert_eq!(
            plan_with(&sent(resends, deadlines_ago), &behind()),
            Plan::BehindTooLong {
                position: SentPosition {
                    partition: 1,
                    offset: 40
                },
                ahead: 15,
                read: false,
                deadlines: i64::from(resends + deadlines_ago),
            },
            "resends {resends}, sent {deadlines_ago} deadlines ago"
        );
    }
    // Budget 0 ("never re-sent"): flagged at the first deadline, as before.
    let strict = PartnerRecord {
        resend_budget: 0,
        ..partner("a")
    };
    assert!(matches!(
        judge(&overdue(0, 0), &strict, &behind(), now()),
        handover::Handover::BehindTooLong { deadlines: 1, .. }
    ));
    // A clock behind the send time counts no deadline passed, not a negative number.
    assert!(matches!(
        judge(&sent(0, -1), &partner("a"), &behind(), now()),
        handover::Handover::Behind { .. }
    ));
}

#[test]
fn behind_moves_the_deadline_on_without_a_send_or_a_resend_counted() {
    let order = overdue(1, 1);
    let plan = plan_with(&order, &behind());
    let settled = settle_one(&order, &plan, &ok());
    assert_eq!(
        settled.update,
        RowUpdate {
            state: DispatchState::Sent,
            ack_due_at: Some(now() + Duration::minutes(10)),
            ..RowUpdate::keep(&order, now())
        }
    );
    assert_eq!(settled.update.resends, 1, "no re-send counted");
    assert_eq!(settled.update.attempts, 1, "no attempt made or forgiven");
    assert_eq!(settled.update.sent_at, None, "the send time stays");
    assert_eq!(settled.update.sent_position, order.sent_position);
    assert_eq!(settled.attempt, None, "nothing for the attempt log");
    assert_eq!(settled.first_send, None);
    assert_eq!(
        settled.outcome,
        Outcome::HandoverExtended {
            partner_id: "a".to_owned(),
            ahead: 15,
            due: now() + Duration::minutes(10),
        }
    );
}

#[test]
fn behind_too_long_is_unacknowledged_with_where_the_order_waits() {
    let order = LeasedOrder {
        sent_at: Some(now() - Duration::minutes(30)),
        ..overdue(0, 0)
    };
    let plan = plan_with(&order, &behind());
    let settled = settle_one(&order, &plan, &ok());
    assert_eq!(settled.update.state, DispatchState::Unacknowledged);
    assert_eq!(settled.update.ack_due_at, None);
    assert_eq!(settled.update.resends, 0);
    let reason = "partner a did not confirm receipt: its consumers are alive but have not read \
                  the order in 3 handover deadlines (partition 1, offset 40, 15 records before it)";
    assert_eq!(settled.update.last_error.as_deref(), Some(reason));
    assert_eq!(settled.attempt, None);
    assert_eq!(
        settled.outcome,
        Outcome::Unacknowledged {
            reason: reason.to_owned(),
            after_failed_resend: false,
        }
    );
}
