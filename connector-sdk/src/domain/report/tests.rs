//! Every transition of the report sender's decisions (see the module docs), on a fixed clock.

use rand::{SeedableRng, rngs::StdRng};

use super::*;
use crate::{clock::Clock as _, domain::test_clock as clock};

/// Three attempts, retries waiting up to 0.5 s, 1 s, …
const RETRY: ReportRetry = ReportRetry {
    attempts: 3,
    backoff: Backoff {
        base: Duration::from_millis(500),
        cap: Duration::from_secs(60),
    },
};

fn rng() -> StdRng {
    StdRng::seed_from_u64(42)
}

fn failure(code: Code, retry_after: Option<u64>) -> Failure {
    Failure {
        code,
        message: "the order is being handed to you".to_owned(),
        retry_after: retry_after.map(Duration::from_millis),
    }
}

fn decide(failure: &Failure, attempt: u32, quick_allowed: bool, now: DateTime<Utc>) -> Settle {
    settle(
        Err(failure),
        attempt,
        &RETRY,
        quick_allowed,
        now,
        &mut rng(),
    )
}

fn status(retry_after: Option<&str>) -> tonic::Status {
    let mut status = tonic::Status::unavailable("the order is being handed to you");
    if let Some(value) = retry_after {
        status
            .metadata_mut()
            .insert(RETRY_AFTER_MS, value.parse().expect("ascii"));
    }
    status
}

#[test]
fn a_full_pipeline_leaves_a_new_report_to_the_inbox() {
    assert_eq!(admit(MAX_PENDING, false, false), Admission::ToInbox);
    assert_eq!(admit(MAX_PENDING + 1, false, true), Admission::ToInbox);
}

#[test]
fn while_reports_wait_in_the_inbox_a_new_one_queues_behind_them() {
    assert_eq!(admit(0, true, false), Admission::ToInbox);
    assert_eq!(admit(MAX_PENDING - 1, true, false), Admission::ToInbox);
}

#[test]
fn a_report_being_sent_is_not_sent_twice() {
    assert_eq!(admit(3, false, true), Admission::AlreadySending);
}

#[test]
fn with_room_and_nothing_waiting_a_report_is_sent_at_once() {
    assert_eq!(admit(0, false, false), Admission::Send);
    assert_eq!(admit(MAX_PENDING - 1, false, false), Admission::Send);
}

#[test]
fn a_report_statusingest_took_is_confirmed_duplicate_or_not() {
    for duplicate in [false, true] {
        assert_eq!(
            settle(Ok(duplicate), 1, &RETRY, true, clock().now(), &mut rng()),
            Settle::Confirmed { duplicate }
        );
    }
}

#[test]
fn a_refusal_that_can_never_pass_is_kept_as_refused_at_once() {
    let refused = failure(Code::PermissionDenied, Some(10));
    assert_eq!(
        decide(&refused, 1, true, clock().now()),
        Settle::Refused {
            error: "PermissionDenied: the order is being handed to you".to_owned()
        }
    );
}

#[test]
fn a_failure_that_may_pass_with_the_budget_spent_is_kept_as_refused() {
    for code in [Code::Unavailable, Code::Unauthenticated] {
        assert_eq!(
            decide(&failure(code, None), 3, true, clock().now()),
            Settle::Refused {
                error: format!("{code:?}: the order is being handed to you")
            }
        );
    }
}

#[test]
fn a_quick_retry_asked_for_is_made_by_the_pipeline_after_that_delay() {
    let clock = clock();
    assert_eq!(
        decide(&failure(Code::Unavailable, Some(20)), 1, true, clock.now()),
        Settle::Retry {
            next_attempt_at: clock.now() + chrono::Duration::milliseconds(20),
            delay: Duration::from_millis(20),
            quick: true,
            error: "Unavailable: the order is being handed to you".to_owned(),
        }
    );
}

#[test]
fn other_failures_that_may_pass_are_due_again_after_the_backoff() {
    let clock = clock();
    // A token refused (a key enrolled in a moment, a skewed clock, a replay): a fresh token
    // next time. No delay asked, or quick retries spent: the backoff's.
    for (code, asked, quick_allowed) in [
        (Code::Unauthenticated, None, true),
        (Code::Unavailable, None, true),
        (Code::Unavailable, Some(20), false),
    ] {
        for attempt in [1, 2] {
            let delay = RETRY.backoff.delay(attempt, &mut rng());
            assert!(delay <= RETRY.backoff.ceiling(attempt));
            assert_eq!(
                decide(&failure(code, asked), attempt, quick_allowed, clock.now()),
                Settle::Retry {
                    next_attempt_at: clock.now()
                        + chrono::Duration::from_std(delay).expect("small"),
                    delay,
                    quick: false,
                    error: format!("{code:?}: the order is being handed to you"),
                },
                "{code:?} {asked:?} {quick_allowed} {attempt}"
            );
        }
    }
}

#[test]
fn quick_retries_double_from_the_delay_asked_up_to_the_quick_bound() {
    let asked = Duration::from_millis(10);
    assert_eq!(quick_delay(asked, 0), Duration::from_millis(10));
    assert_eq!(quick_delay(asked, 1), Duration::from_millis(20));
    assert_eq!(quick_delay(asked, 4), Duration::from_millis(160));
    assert_eq!(quick_delay(asked, 5), QUICK_RETRY);
    assert_eq!(quick_delay(asked, u32::MAX), QUICK_RETRY, "no overflow");
}

#[test]
fn a_short_retry_asked_for_is_taken_and_a_long_or_garbled_one_is_the_backoffs() {
    assert_eq!(
        retry_after(&status(Some("10"))),
        Some(Duration::from_millis(10))
    );
    assert_eq!(
        retry_after(&status(Some(" 250 "))),
        Some(Duration::from_millis(250))
    );
    assert_eq!(retry_after(&status(Some("251"))), None, "over QUICK_RETRY");
    assert_eq!(retry_after(&status(Some("-1"))), None);
    assert_eq!(retry_after(&status(Some("soon"))), None);
    assert_eq!(retry_after(&status(None)), None);
    assert_eq!(
        Failure::of(&status(Some("10"))),
        failure(Code::Unavailable, Some(10))
    );
}

#[test]
fn room_again_with_reports_waiting_in_the_inbox_wakes_the_scan() {
    assert!(wake_scan_after_send(MAX_PENDING - 1, true));
    assert!(
        !wake_scan_after_send(MAX_PENDING - 1, false),
        "none waiting"
    );
    assert!(!wake_scan_after_send(MAX_PENDING, true), "no room yet");
}

#[test]
fn a_scan_that_read_less_than_a_batch_has_caught_up() {
    assert!(scan_caught_up(0));
    assert!(scan_caught_up(BATCH - 1));
    assert!(!scan_caught_up(BATCH), "more may be due");
}

#[test]
fn the_idle_scan_sleeps_until_the_next_report_is_due_within_its_bound() {
    let clock = clock();
    let now = clock.now();
    assert_eq!(
        scan_wait(Some(now + chrono::Duration::seconds(2)), now),
        Duration::from_secs(2)
    );
    assert_eq!(
        scan_wait(Some(now + chrono::Duration::minutes(5)), now),
        SCAN_AT_MOST_EVERY
    );
    // Due now or overdue: the pipeline is sending it (and wakes the scan if it fails).
    assert_eq!(scan_wait(Some(now), now), SCAN_AT_MOST_EVERY);
    assert_eq!(
        scan_wait(Some(now - chrono::Duration::seconds(1)), now),
        SCAN_AT_MOST_EVERY
    );
    assert_eq!(scan_wait(None, now), SCAN_AT_MOST_EVERY);
    // The clock moves on: the same due time, a shorter sleep.
    let due = now + chrono::Duration::seconds(2);
    clock.advance(chrono::Duration::milliseconds(1_500));
    assert_eq!(
        scan_wait(Some(due), clock.now()),
        Duration::from_millis(500)
    );
}
