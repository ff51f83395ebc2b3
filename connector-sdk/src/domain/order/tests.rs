//! Every transition of the worker's decisions (see the module docs), on a fixed clock.

use rand::{SeedableRng, rngs::StdRng};

use super::*;
use crate::{clock::Clock as _, domain::test_clock as clock, status::StatusUpdate};

fn row(state: OrderState, deliveries: i64) -> InboxOrder {
    InboxOrder {
        order_id: "order-1".to_owned(),
        state,
        reply_to: "http://ingest.eu:50053".to_owned(),
        region: "eu".to_owned(),
        traceparent: None,
        tracking_id: String::new(),
        reason: String::new(),
        deliveries,
        adapter_calls: deliveries,
    }
}

/// Three calls, retries waiting up to 1 s, 2 s, …
const RETRY: AdapterRetry = AdapterRetry {
    attempts: 3,
    backoff: Backoff {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(60),
    },
};

fn rng() -> StdRng {
    StdRng::seed_from_u64(42)
}

fn decide(result: CallResult, attempt: u32) -> AfterCall {
    after_call(result, attempt, &RETRY, &mut rng())
}

#[test]
fn a_record_that_is_not_an_order_is_set_aside_once() {
    assert_eq!(on_undecodable(false), OnUndecodable::SetAside);
    assert_eq!(on_undecodable(true), OnUndecodable::Done, "a redelivery");
}

#[test]
fn an_order_the_inbox_answered_is_answered_from_the_inbox() {
    for state in [
        OrderState::Accepted,
        OrderState::Rejected,
        OrderState::SetAside,
    ] {
        for deliveries in [1, 2, 7] {
            assert_eq!(
                on_delivery(&row(state, deliveries)),
                OnDelivery::AnswerFromInbox,
                "{state:?} delivered {deliveries} times"
            );
        }
    }
}

#[test]
fn an_order_seen_before_without_an_answer_goes_to_the_adapter_again() {
    assert_eq!(
        on_delivery(&row(OrderState::Started, 2)),
        OnDelivery::CallAgain
    );
}

#[test]
fn a_first_delivery_goes_to_the_adapter() {
    assert_eq!(
        on_delivery(&row(OrderState::Started, 1)),
        OnDelivery::FirstCall
    );
}

#[test]
fn an_answer_is_stored_whatever_the_attempt() {
    for attempt in [1, 3] {
        assert_eq!(
            decide(CallResult::Answered(Acceptance::accepted("T-1")), attempt),
            AfterCall::Store(Acceptance::accepted("T-1"))
        );
        let rejected = Acceptance::rejected("no trucks", "NO_CAPACITY");
        assert_eq!(
            decide(CallResult::Answered(rejected.clone()), attempt),
            AfterCall::Store(rejected)
        );
    }
}

#[test]
fn a_permanent_error_sets_the_order_aside_at_once() {
    assert_eq!(
        decide(
            CallResult::Failed(PartnerError::permanent("no such SKU")),
            1
        ),
        AfterCall::SetAside("adapter failed permanently: no such SKU".to_owned())
    );
}

#[test]
fn a_panic_sets_the_order_aside_at_once() {
    assert_eq!(
        decide(CallResult::Panicked, 1),
        AfterCall::SetAside("adapter panicked".to_owned())
    );
}

#[test]
fn a_retryable_error_or_a_timeout_with_attempts_left_is_retried_after_a_backoff() {
    for attempt in [1, 2] {
        let expected_delay = RETRY.backoff.delay(attempt, &mut rng());
        assert!(expected_delay <= RETRY.backoff.ceiling(attempt));
        assert_eq!(
            decide(
                CallResult::Failed(PartnerError::retryable("503 from the API")),
                attempt
            ),
            AfterCall::Retry {
                delay: expected_delay,
                failure: "503 from the API".to_owned(),
            }
        );
        assert_eq!(
            decide(CallResult::TimedOut(Duration::from_millis(1500)), attempt),
            AfterCall::Retry {
                delay: expected_delay,
                failure: "adapter call timed out after 1500 ms".to_owned(),
            }
        );
    }
}

#[test]
fn a_retryable_error_or_a_timeout_with_attempts_spent_sets_the_order_aside() {
    assert_eq!(
        decide(CallResult::Failed(PartnerError::retryable("503")), 3),
        AfterCall::SetAside("adapter failed 3 times, the latest: 503".to_owned())
    );
    assert_eq!(
        decide(CallResult::TimedOut(Duration::from_secs(30)), 3),
        AfterCall::SetAside(
            "adapter failed 3 times, the latest: adapter call timed out after 30000 ms".to_owned()
        )
    );
}

#[test]
fn an_answer_is_stored_with_its_report_under_a_deterministic_id() {
    let clock = clock();
    let traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned());
    let accepted = answer(
        "order-1",
        Acceptance::accepted("T-1"),
        "http://ingest.eu:50053",
        traceparent.clone(),
        clock.now(),
    );
    assert_eq!(
        accepted.answer,
        StoredAnswer::Accepted {
            tracking_id: "T-1".to_owned()
        }
    );
    assert_eq!(
        accepted.report,
        StoredReport::pending(
            "order-1:RECEIVED_BY_PARTNER".to_owned(),
            "order-1".to_owned(),
            "RECEIVED_BY_PARTNER",
            "T-1".to_owned(),
            String::new(),
            String::new(),
            false,
            clock.now(),
            "http://ingest.eu:50053".to_owned(),
            traceparent,
        )
    );
    clock.advance(chrono::Duration::seconds(5));
    let rejected = answer(
        "order-1",
        Acceptance::rejected("out of area", "OUT_OF_AREA"),
        "http://ingest.eu:50053",
        None,
        clock.now(),
    );
    assert_eq!(
        rejected.answer,
        StoredAnswer::Rejected {
            reason: "out of area".to_owned()
        }
    );
    let report = rejected.report;
    assert_eq!(report.report_id, "order-1:REJECTED_BY_PARTNER");
    assert_eq!(
        (report.detail.as_str(), report.detail_code.as_str()),
        ("out of area", "OUT_OF_AREA")
    );
    assert_eq!(report.tracking_id, "");
    assert_eq!(report.occurred_at, clock.now(), "when the answer came");
}

#[test]
fn the_answer_the_inbox_kept_is_reported_on_the_pipeline() {
    let ours = StoredAnswer::Accepted {
        tracking_id: "T-1".to_owned(),
    };
    let stored = InboxOrder {
        tracking_id: "T-1".to_owned(),
        ..row(OrderState::Accepted, 1)
    };
    assert_eq!(after_store(&ours, &stored), AfterStore::Submit);
    let rejected = StoredAnswer::Rejected {
        reason: "full".to_owned(),
    };
    let stored = InboxOrder {
        reason: "full".to_owned(),
        ..row(OrderState::Rejected, 1)
    };
    assert_eq!(after_store(&rejected, &stored), AfterStore::Submit);
}

#[test]
fn another_instances_different_answer_is_left_to_the_scan() {
    let ours = StoredAnswer::Accepted {
        tracking_id: "T-1".to_owned(),
    };
    let theirs = InboxOrder {
        tracking_id: "T-2".to_owned(),
        ..row(OrderState::Accepted, 2)
    };
    assert_eq!(after_store(&ours, &theirs), AfterStore::WakeScan);
    let rejected_meanwhile = row(OrderState::Rejected, 2);
    assert_eq!(
        after_store(&ours, &rejected_meanwhile),
        AfterStore::WakeScan
    );
    let set_aside_meanwhile = row(OrderState::SetAside, 2);
    assert_eq!(
        after_store(&ours, &set_aside_meanwhile),
        AfterStore::WakeScan
    );
}

#[test]
fn the_latency_runs_from_placing_to_the_clock_and_never_below_zero() {
    let clock = clock();
    let placed = |at: DateTime<Utc>| prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).expect("nanos"),
    };
    let at = placed(clock.now() - chrono::Duration::milliseconds(2_500));
    assert_eq!(placed_to_answered(Some(&at), clock.now()), Some(2.5));
    let ahead = placed(clock.now() + chrono::Duration::seconds(3));
    assert_eq!(
        placed_to_answered(Some(&ahead), clock.now()),
        Some(0.0),
        "skew"
    );
    assert_eq!(placed_to_answered(None, clock.now()), None);
    let garbled = prost_types::Timestamp {
        seconds: 1,
        nanos: -1,
    };
    assert_eq!(placed_to_answered(Some(&garbled), clock.now()), None);
}

#[test]
fn an_acceptance_schedules_its_later_reports_in_the_same_answer() {
    let clock = clock();
    let traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned());
    let acceptance = Acceptance::accepted("T-1")
        .then_report(StatusUpdate::shipped(), Duration::from_secs(2))
        .then_report(
            StatusUpdate::exception("DELAYED")
                .with_detail("storm")
                .with_tracking_id("T-2")
                .with_report_id("order-1:delayed"),
            Duration::from_secs(3600),
        );
    assert_eq!(
        decide(CallResult::Answered(acceptance.clone()), 1),
        AfterCall::Store(acceptance.clone())
    );
    let made = answer(
        "order-1",
        acceptance,
        "http://ingest.eu:50053",
        traceparent.clone(),
        clock.now(),
    );
    let shipped_at = clock.now() + chrono::Duration::seconds(2);
    assert_eq!(
        made.later[0],
        StoredReport::pending(
            "order-1:later:0".to_owned(),
            "order-1".to_owned(),
            "SHIPPED",
            "T-1".to_owned(),
            String::new(),
            String::new(),
            false,
            shipped_at,
            "http://ingest.eu:50053".to_owned(),
            traceparent.clone(),
        )
        .due_at(shipped_at),
        "the tracking id, the reply-to and the trace of the answer; occurred when due"
    );
    let delayed = &made.later[1];
    assert_eq!(delayed.report_id, "order-1:delayed", "the id it named");
    assert_eq!(
        (delayed.status.as_str(), delayed.tracking_id.as_str()),
        ("EXCEPTION", "T-2")
    );
    assert_eq!(
        (delayed.detail.as_str(), delayed.detail_code.as_str()),
        ("storm", "DELAYED")
    );
    assert_eq!(
        delayed.due_at,
        Some(clock.now() + chrono::Duration::hours(1))
    );
    assert_eq!(made.report.due_at, None, "the answer's report: at once");
    let ids: Vec<String> = made.reports().into_iter().map(|r| r.report_id).collect();
    assert_eq!(
        ids,
        [
            "order-1:RECEIVED_BY_PARTNER",
            "order-1:later:0",
            "order-1:delayed"
        ],
        "stored together, the answer's report first"
    );

    // Answered again (a crash before the first answer was stored, another instance): the
    // same ids, so StatusIngest sees duplicates at worst.
    clock.advance(chrono::Duration::seconds(30));
    let again = answer(
        "order-1",
        Acceptance::accepted("T-1").then_report(StatusUpdate::shipped(), Duration::from_secs(2)),
        "http://ingest.eu:50053",
        traceparent,
        clock.now(),
    );
    assert_eq!(again.later[0].report_id, "order-1:later:0");
    assert_eq!(
        again.later[0].due_at,
        Some(clock.now() + chrono::Duration::seconds(2))
    );
}

#[test]
fn a_later_report_keeps_the_time_it_names_and_a_delay_past_the_calendar_is_capped() {
    let clock = clock();
    let at = clock.now() - chrono::Duration::minutes(5);
    let made = answer(
        "order-1",
        Acceptance::accepted("T-1")
            .then_report(StatusUpdate::shipped().occurred_at(at), Duration::ZERO)
            .then_report(StatusUpdate::delivered(), Duration::MAX),
        "http://ingest.eu:50053",
        None,
        clock.now(),
    );
    assert_eq!(made.later[0].occurred_at, at);
    assert_eq!(made.later[0].due_at, Some(clock.now()));
    assert_eq!(made.later[1].due_at, Some(DateTime::<Utc>::MAX_UTC));
}

#[test]
fn a_rejection_has_nothing_to_report_later() {
    let rejected = Acceptance::rejected("no trucks", "NO_CAPACITY")
        .then_report(StatusUpdate::shipped(), Duration::from_secs(1));
    assert!(rejected.later().is_empty());
    let made = answer(
        "order-1",
        rejected,
        "http://ingest.eu:50053",
        None,
        clock().now(),
    );
    assert!(made.later.is_empty());
    assert_eq!(made.reports(), std::slice::from_ref(&made.report));
}

#[test]
fn an_acceptance_with_a_later_report_status_ingest_would_refuse_sets_the_order_aside() {
    let bad = Acceptance::accepted("T-1")
        .then_report(StatusUpdate::shipped(), Duration::from_secs(1))
        .then_report(StatusUpdate::exception("delayed"), Duration::from_secs(2));
    let AfterCall::SetAside(reason) = decide(CallResult::Answered(bad), 1) else {
        panic!("set aside");
    };
    assert!(
        reason.starts_with("adapter failed permanently: it answered with a later report")
            && reason.contains("\"delayed\""),
        "{reason}"
    );
}
