//! Every transition of the dispatch state machine (see the module docs); the behind-or-gone
//! transitions at the handover deadline are in `handover.rs`.

use chrono::{Duration, TimeZone};
use rand::{SeedableRng, rngs::StdRng};

use super::*;
use crate::domain::{
    backoff::Jitter,
    model::{RouteRecord, ShipTo},
};

mod handover;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0)
        .single()
        .expect("a valid instant")
}

fn partner(id: &str) -> PartnerRecord {
    PartnerRecord {
        id: id.to_owned(),
        display_name: id.to_owned(),
        enabled: true,
        handover_deadline: Duration::minutes(10),
        resend_budget: 2,
        topic: format!("waybill.partner.{id}"),
        created_at: now(),
        updated_at: now(),
    }
}

fn route(id: &str, partner: &str, country: &str) -> RouteRecord {
    RouteRecord {
        id: id.to_owned(),
        partner_id: partner.to_owned(),
        country_code: country.to_owned(),
        region: String::new(),
        postal_prefix: String::new(),
        priority: 10,
        enabled: true,
    }
}

/// Routes DE to `a`, then `b`; US to `b`.
fn table() -> RoutingTable {
    RoutingTable::new(
        vec![partner("a"), partner("b")],
        vec![
            route("de-a", "a", "DE"),
            RouteRecord {
                priority: 20,
                ..route("de-b", "b", "DE")
            },
            route("us-b", "b", "US"),
        ],
    )
}

fn order(country: &str) -> LeasedOrder {
    LeasedOrder {
        order_id: Uuid::from_u128(7),
        state: DispatchState::Pending,
        attempts: 0,
        resends: 0,
        partner_id: None,
        acknowledged: false,
        sent_at: None,
        sent_position: None,
        rejected_partners: Vec::new(),
        traceparent: String::new(),
        tracestate: String::new(),
        message: Vec::new(),
        ship_to: ShipTo {
            country_code: country.to_owned(),
            postal_code: "10115".to_owned(),
            ..ShipTo::default()
        },
        currency_code: "EUR".to_owned(),
        total_minor: 5_000,
    }
}

/// A `SENT` order past its deadline at partner `a` (sent one deadline ago, to partition 1 at
/// offset 40).
fn overdue(resends: i32, attempts: i32) -> LeasedOrder {
    LeasedOrder {
        state: DispatchState::Sent,
        partner_id: Some("a".to_owned()),
        resends,
        attempts,
        sent_at: Some(now() - Duration::minutes(10)),
        sent_position: Some(SentPosition {
            partition: 1,
            offset: 40,
        }),
        ..order("DE")
    }
}

fn audit() -> AuditThresholds {
    AuditThresholds::parse(&["EUR=100000"]).expect("valid thresholds")
}

/// Budget 3, no jitter: retry delays are exactly 5 s, 10 s, ...
fn policy() -> RetryPolicy {
    RetryPolicy {
        attempt_budget: 3,
        backoff: BackoffPolicy {
            base: std::time::Duration::from_secs(5),
            cap: std::time::Duration::from_secs(60),
            jitter: Jitter::None,
        },
    }
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(42)
}

fn ok() -> Produced {
    Produced::delivered()
}

fn failed(error: &str) -> Produced {
    Produced {
        partner: Err(error.to_owned()),
        audit: None,
        position: None,
    }
}

/// Delivered to partition 2 at offset 7.
fn landed() -> Produced {
    Produced {
        position: Some(SentPosition {
            partition: 2,
            offset: 7,
        }),
        ..ok()
    }
}

/// Plans `order` with nothing known of the partners' consumers.
fn plan_plain(order: &LeasedOrder, kind: BatchKind, table: &RoutingTable) -> Plan {
    plan(order, kind, table, &audit(), &Progress::default(), now())
}

fn settle_one(order: &LeasedOrder, plan: &Plan, produced: &Produced) -> Settled {
    settle(order, plan, produced, now(), &policy(), &mut rng())
}

#[test]
fn a_due_order_is_planned_to_its_first_matching_partner_skipping_rejections() {
    let plan_for = |order: &LeasedOrder| plan_plain(order, BatchKind::Due, &table());
    let Plan::Send {
        partner,
        route_id,
        audited,
    } = plan_for(&order("DE"))
    else {
        panic!("a route matches DE")
    };
    assert_eq!(
        (partner.id.as_str(), route_id.as_str(), audited),
        ("a", "de-a", false)
    );

    let rejected_by_a = LeasedOrder {
        rejected_partners: vec!["a".to_owned()],
        ..order("DE")
    };
    assert!(matches!(plan_for(&rejected_by_a), Plan::Send { partner, .. } if partner.id == "b"));

    let rejected_by_both = LeasedOrder {
        rejected_partners: vec!["a".to_owned(), "b".to_owned()],
        ..order("DE")
    };
    assert_eq!(
        plan_for(&rejected_by_both),
        Plan::Unroutable { no_routes: false }
    );
    assert_eq!(
        plan_for(&order("JP")),
        Plan::Unroutable { no_routes: false }
    );

    let empty = RoutingTable::new(Vec::new(), Vec::new());
    assert_eq!(
        plan_plain(&order("DE"), BatchKind::Due, &empty),
        Plan::Unroutable { no_routes: true }
    );
}

#[test]
fn orders_at_or_above_the_threshold_get_an_audit_copy() {
    let rich = LeasedOrder {
        total_minor: 100_000,
        ..order("DE")
    };
    assert!(matches!(
        plan_plain(&rich, BatchKind::Due, &table()),
        Plan::Send { audited: true, .. }
    ));
}

#[test]
fn an_overdue_order_is_acknowledged_resent_or_given_up() {
    // Nothing known of the partner's consumers: the partner counts as gone.
    let plan_for = |order: &LeasedOrder| plan_plain(order, BatchKind::Overdue, &table());
    let confirmed = LeasedOrder {
        acknowledged: true,
        ..overdue(0, 0)
    };
    assert_eq!(plan_for(&confirmed), Plan::Acknowledged);
    assert_eq!(
        plan_for(&overdue(1, 0)),
        Plan::Resend {
            partner: partner("a")
        }
    );
    // Resend budget 2: after two re-sends it is not sent again.
    assert_eq!(plan_for(&overdue(2, 0)), Plan::Unacknowledged);
    let partner_gone = LeasedOrder {
        partner_id: Some("gone".to_owned()),
        ..overdue(0, 0)
    };
    assert_eq!(plan_for(&partner_gone), Plan::Unacknowledged);
}

#[test]
fn unroutable_says_why_and_logs_the_decision() {
    let rejected = LeasedOrder {
        rejected_partners: vec!["a".to_owned()],
        ..order("JP")
    };
    let settled = settle_one(&rejected, &Plan::Unroutable { no_routes: false }, &ok());
    assert_eq!(settled.update.state, DispatchState::Unroutable);
    let reason = settled.update.last_error.clone().expect("a reason");
    assert!(
        reason.contains("no route matches country \"JP\""),
        "{reason}"
    );
    assert!(reason.contains("rejected by a"), "{reason}");
    assert_eq!(settled.attempt.map(|a| a.error), Some(reason.clone()));
    assert_eq!(settled.outcome, Outcome::Unroutable { reason });

    let none = settle_one(&order("DE"), &Plan::Unroutable { no_routes: true }, &ok());
    let reason = none.update.last_error.expect("a reason");
    assert!(reason.contains("EnrollPartner, SetRoute"), "{reason}");
    assert!(reason.contains("RetryDispatches"), "{reason}");
}

fn send_plan(audited: bool) -> Plan {
    Plan::Send {
        partner: partner("a"),
        route_id: "de-a".to_owned(),
        audited,
    }
}

#[test]
fn a_successful_send_is_sent_with_its_handover_deadline() {
    let retrying = LeasedOrder {
        state: DispatchState::Retrying,
        attempts: 2,
        ..order("DE")
    };
    let settled = settle_one(&retrying, &send_plan(false), &landed());
    assert_eq!(
        settled.update,
        RowUpdate {
            order_id: retrying.order_id,
            state: DispatchState::Sent,
            attempts: 0,
            next_attempt_at: now(),
            last_error: Some(String::new()),
            partner_id: Some("a".to_owned()),
            route_id: Some("de-a".to_owned()),
            resends: 0,
            sent_at: Some(now()),
            ack_due_at: Some(now() + Duration::minutes(10)),
            sent_position: Some(SentPosition {
                partition: 2,
                offset: 7,
            }),
        }
    );
    assert_eq!(
        settled.first_send,
        Some((retrying.order_id, "a".to_owned()))
    );
    let attempt = settled
        .attempt
        .expect("a success after failures closes their run in the log");
    assert_eq!((attempt.attempt, attempt.error.as_str()), (3, ""));
    assert_eq!(attempt.topic, "waybill.partner.a");
    assert_eq!(settled.audit_retry_at, None);
}

#[test]
fn a_first_try_send_is_not_logged_its_row_says_where_it_went() {
    let settled = settle_one(&order("DE"), &send_plan(false), &ok());
    assert_eq!(settled.update.state, DispatchState::Sent);
    assert_eq!(settled.update.partner_id.as_deref(), Some("a"));
    assert_eq!(settled.attempt, None);
}

#[test]
fn a_failed_audit_copy_waits_in_the_audit_outbox_and_the_order_is_sent() {
    let produced = Produced {
        audit: Some(Err("audit topic down".to_owned())),
        ..ok()
    };
    let settled = settle_one(&order("DE"), &send_plan(true), &produced);
    assert_eq!(settled.update.state, DispatchState::Sent);
    assert_eq!(settled.audit_retry_at, Some(now() + Duration::seconds(5)));
    assert_eq!(
        settled.outcome,
        Outcome::Sent {
            partner_id: "a".to_owned(),
            audit_deferred: Some("audit topic down".to_owned()),
        }
    );
    let delivered = Produced {
        audit: Some(Ok(())),
        ..ok()
    };
    assert_eq!(
        settle_one(&order("DE"), &send_plan(true), &delivered).audit_retry_at,
        None
    );
}

#[test]
fn a_failed_send_retries_with_backoff_and_logs_only_the_first_failure_of_a_run() {
    let first = settle_one(&order("DE"), &send_plan(false), &failed("broker down"));
    assert_eq!(first.update.state, DispatchState::Retrying);
    assert_eq!(first.update.attempts, 1);
    assert_eq!(first.update.next_attempt_at, now() + Duration::seconds(5));
    assert_eq!(first.update.last_error.as_deref(), Some("broker down"));
    assert_eq!(first.update.partner_id.as_deref(), Some("a"));
    assert_eq!(first.first_send, None);
    assert_eq!(
        first.attempt.map(|a| a.error),
        Some("broker down".to_owned())
    );
    assert!(matches!(
        first.outcome,
        Outcome::Retrying { failures: 1, .. }
    ));

    let second = settle_one(
        &LeasedOrder {
            state: DispatchState::Retrying,
            attempts: 1,
            ..order("DE")
        },
        &send_plan(false),
        &failed("still down"),
    );
    assert_eq!(second.update.state, DispatchState::Retrying);
    assert_eq!(second.update.next_attempt_at, now() + Duration::seconds(10));
    assert_eq!(
        second.attempt, None,
        "failures between the first and last are not logged"
    );
}

#[test]
fn the_last_failure_within_the_budget_makes_the_order_dead() {
    let settled = settle_one(
        &LeasedOrder {
            state: DispatchState::Retrying,
            attempts: 2,
            ..order("DE")
        },
        &send_plan(false),
        &failed("gone for good"),
    );
    assert_eq!(settled.update.state, DispatchState::Dead);
    assert_eq!(settled.update.attempts, 3);
    assert_eq!(settled.update.last_error.as_deref(), Some("gone for good"));
    assert_eq!(
        settled.attempt.map(|a| a.attempt),
        Some(3),
        "the last failure is logged"
    );
    assert_eq!(
        settled.outcome,
        Outcome::Dead {
            failures: 3,
            error: "gone for good".to_owned()
        }
    );
}

#[test]
fn jitter_comes_from_the_callers_random_source() {
    let jittered = RetryPolicy {
        backoff: BackoffPolicy {
            jitter: Jitter::Full,
            ..policy().backoff
        },
        ..policy()
    };
    let at = |seed: u64| {
        settle(
            &order("DE"),
            &send_plan(false),
            &failed("down"),
            now(),
            &jittered,
            &mut StdRng::seed_from_u64(seed),
        )
        .update
        .next_attempt_at
    };
    assert_eq!(at(1), at(1), "the same seed, the same schedule");
    for seed in 0..50 {
        let delay = at(seed) - now();
        assert!(
            delay >= Duration::zero() && delay <= Duration::seconds(5),
            "{delay}"
        );
    }
}

#[test]
fn an_order_confirmed_meanwhile_is_acknowledged_and_its_deadline_cleared() {
    let settled = settle_one(&overdue(0, 0), &Plan::Acknowledged, &ok());
    assert_eq!(settled.update.state, DispatchState::Acknowledged);
    assert_eq!(settled.update.ack_due_at, None);
    assert_eq!(settled.attempt, None);
    assert_eq!(settled.outcome, Outcome::Acknowledged);
}

#[test]
fn an_order_out_of_resends_is_unacknowledged() {
    let settled = settle_one(&overdue(2, 0), &Plan::Unacknowledged, &ok());
    assert_eq!(settled.update.state, DispatchState::Unacknowledged);
    assert_eq!(settled.update.ack_due_at, None);
    assert_eq!(
        settled.update.last_error.as_deref(),
        Some("partner a did not confirm receipt after 3 sends")
    );
}

#[test]
fn a_resend_renews_the_deadline_and_counts() {
    let plan = Plan::Resend {
        partner: partner("a"),
    };
    let settled = settle_one(&overdue(1, 1), &plan, &landed());
    assert_eq!(settled.update.state, DispatchState::Sent);
    assert_eq!(settled.update.resends, 2);
    assert_eq!(
        settled.update.sent_position,
        Some(SentPosition {
            partition: 2,
            offset: 7
        }),
        "the row keeps where the latest copy landed"
    );
    assert_eq!(settled.update.attempts, 0);
    assert_eq!(
        settled.update.ack_due_at,
        Some(now() + Duration::minutes(10))
    );
    assert_eq!(settled.update.sent_at, Some(now()));
    assert_eq!(
        settled.first_send, None,
        "only the first send appends SENT_TO_PARTNER"
    );
    assert!(settled.attempt.is_some());
    assert_eq!(
        settled.outcome,
        Outcome::Resent {
            partner_id: "a".to_owned(),
            resends: 2
        }
    );
}

#[test]
fn a_failed_resend_backs_off_as_sent_then_gives_up_as_unacknowledged() {
    let plan = Plan::Resend {
        partner: partner("a"),
    };
    let first = settle_one(&overdue(1, 0), &plan, &failed("timed out"));
    assert_eq!(first.update.state, DispatchState::Sent);
    assert_eq!(first.update.attempts, 1);
    assert_eq!(first.update.resends, 1, "a failed re-send is not a re-send");
    assert_eq!(
        first.update.sent_position,
        overdue(1, 0).sent_position,
        "where the last copy landed stays"
    );
    assert_eq!(first.update.ack_due_at, Some(now() + Duration::seconds(5)));
    assert!(first.attempt.is_some());
    assert!(matches!(
        first.outcome,
        Outcome::ResendRetrying { failures: 1, .. }
    ));

    let middle = settle_one(&overdue(1, 1), &plan, &failed("timed out"));
    assert_eq!(middle.attempt, None);

    let last = settle_one(&overdue(1, 2), &plan, &failed("timed out"));
    assert_eq!(last.update.state, DispatchState::Unacknowledged);
    assert_eq!(last.update.ack_due_at, None);
    assert_eq!(
        last.update.last_error.as_deref(),
        Some("partner a did not confirm receipt and 3 re-sends failed, the latest: timed out")
    );
    assert!(last.attempt.is_some());
    assert!(matches!(
        last.outcome,
        Outcome::Unacknowledged {
            after_failed_resend: true,
            ..
        }
    ));
}
