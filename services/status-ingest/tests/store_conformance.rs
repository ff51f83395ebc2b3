//! One conformance suite for every `IngestStore`: each case runs against a fresh Postgres
//! database and a fresh SQLite file.
#![allow(clippy::unwrap_used)]

mod common;

use chrono::Duration;
use common::{World, start};
use uuid::Uuid;
use waybill_proto::v1::OrderStatus;
use waybill_status_ingest::store::{AuthenticatedReport, ReportOutcome};
use waybill_test_kit::{TestBackend, on_both_backends};

on_both_backends!(
    an_accepted_report_lands_on_the_order_and_acknowledges_the_handover,
    a_duplicate_report_id_changes_nothing,
    a_replayed_token_id_changes_nothing,
    unrouted_foreign_and_missing_orders_get_the_same_refusal,
    out_of_order_reports_keep_sequence_and_never_move_the_order_back,
    reports_after_delivered_are_kept_and_flagged,
    a_rejection_puts_the_order_back_for_routing_and_remembers_the_partner,
    acknowledging_fences_a_relay_batch_in_flight,
    a_report_id_reused_for_another_order_is_refused,
    concurrent_retries_of_one_report_append_once,
    expired_token_ids_are_purged,
    keys_are_read_with_their_revocation,
);

fn report(order: Uuid, status: OrderStatus, report_id: &str) -> AuthenticatedReport {
    AuthenticatedReport {
        order_id: order,
        partner_id: "acme".to_owned(),
        report_id: report_id.to_owned(),
        status,
        tracking_id: String::new(),
        detail: String::new(),
        detail_code: String::new(),
        action_required: false,
        occurred_at: start() - Duration::minutes(5),
        token_id: Uuid::new_v4().to_string(),
        token_id_kept_until: start() + Duration::minutes(3),
        key_id: "k1".to_owned(),
    }
}

async fn routed_world(backend: TestBackend) -> (World, Uuid) {
    let world = World::new(backend).await;
    world.partner_with_key("acme").await;
    world.partner_with_key("globex").await;
    let order = world.order().await;
    world.route(order, "acme").await;
    (world, order)
}

async fn an_accepted_report_lands_on_the_order_and_acknowledges_the_handover(backend: TestBackend) {
    let (world, order) = routed_world(backend).await;
    let received = AuthenticatedReport {
        tracking_id: "1Z999".to_owned(),
        detail: "at the depot\nbay 4".to_owned(),
        detail_code: "ACCEPTED".to_owned(),
        action_required: true,
        ..report(order, OrderStatus::ReceivedByPartner, "r-1")
    };
    // Placed at start(); acknowledged 90.5 s later by the services' clock.
    world.clock.advance(Duration::milliseconds(90_500));
    let outcome = world.store.record_report(&received).await.unwrap();
    let ReportOutcome::Accepted {
        sequence,
        effects,
        placed_to_acknowledged,
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(sequence, 3);
    assert!(effects.acknowledge && effects.record_tracking);
    assert_eq!(
        placed_to_acknowledged,
        Some(std::time::Duration::from_millis(90_500)),
        "placed → acknowledged, for the report that acknowledged the handover"
    );
    let history = world.history(order).await;
    let event = history.last().unwrap();
    assert_eq!(
        (event.seq, event.status.as_str()),
        (3, "RECEIVED_BY_PARTNER")
    );
    assert_eq!(event.partner_id, "acme");
    assert_eq!(event.tracking_id, "1Z999");
    assert_eq!(event.report_id.as_deref(), Some("r-1"));
    assert_eq!(event.detail, "at the depot\nbay 4");
    assert_eq!(
        (
            event.detail_code.as_str(),
            event.action_required,
            event.needs_review
        ),
        ("ACCEPTED", true, false)
    );
    assert_eq!(
        event.occurred_at,
        start() - Duration::minutes(5),
        "the partner's time"
    );
    let row = world.order_row(order).await;
    assert_eq!(
        (row.status.as_str(), row.status_seq),
        ("RECEIVED_BY_PARTNER", 3)
    );
    assert_eq!(row.tracking_id.as_deref(), Some("1Z999"));
    let dispatch = world.dispatch_row(order).await;
    assert_eq!(dispatch.state, "ACKNOWLEDGED");
    assert_eq!(
        dispatch.ack_due_at, None,
        "the handover deadline no longer applies"
    );
    assert_eq!(world.token_ids().await, 1);
    // The next report acknowledges nothing new: the handover was acknowledged already.
    let shipped = world
        .store
        .record_report(&report(order, OrderStatus::Shipped, "r-2"))
        .await
        .unwrap();
    assert!(
        matches!(
            shipped,
            ReportOutcome::Accepted {
                placed_to_acknowledged: None,
                ..
            }
        ),
        "{shipped:?}"
    );
}

async fn a_duplicate_report_id_changes_nothing(backend: TestBackend) {
    let (world, order) = routed_world(backend).await;
    let first = AuthenticatedReport {
        tracking_id: "T1".into(),
        ..report(order, OrderStatus::Shipped, "r-1")
    };
    assert!(matches!(
        world.store.record_report(&first).await.unwrap(),
        ReportOutcome::Accepted { .. }
    ));
    let (order_row, dispatch, history, rejections, _) = world.state_of(order).await;
    // A retry: a fresh token for the same report id, even with other details.
    let retry = AuthenticatedReport {
        detail: "again".into(),
        tracking_id: "T2".into(),
        ..report(order, OrderStatus::Shipped, "r-1")
    };
    assert_eq!(
        world.store.record_report(&retry).await.unwrap(),
        ReportOutcome::Duplicate
    );
    let after = world.state_of(order).await;
    assert_eq!(
        (after.0, after.1, after.2, after.3),
        (order_row, dispatch, history, rejections)
    );
    assert_eq!(
        after.4, 2,
        "the retry's token id is spent too: a token is accepted once"
    );
}

async fn a_replayed_token_id_changes_nothing(backend: TestBackend) {
    let (world, order) = routed_world(backend).await;
    let first = report(order, OrderStatus::ReceivedByPartner, "r-1");
    world.store.record_report(&first).await.unwrap();
    let before = world.state_of(order).await;
    let replay = AuthenticatedReport {
        report_id: "r-2".into(),
        status: OrderStatus::Shipped,
        ..first.clone()
    };
    assert_eq!(
        world.store.record_report(&replay).await.unwrap(),
        ReportOutcome::Replayed
    );
    assert_eq!(world.state_of(order).await, before);
}

async fn unrouted_foreign_and_missing_orders_get_the_same_refusal(backend: TestBackend) {
    let world = World::new(backend).await;
    world.partner_with_key("acme").await;
    world.partner_with_key("globex").await;
    let never_routed = world.order().await;
    let foreign = world.order().await;
    world.route(foreign, "globex").await;
    for order in [never_routed, foreign] {
        let before = world.state_of(order).await;
        let outcome = world
            .store
            .record_report(&report(order, OrderStatus::Shipped, "r-1"))
            .await
            .unwrap();
        assert_eq!(outcome, ReportOutcome::NotRouted);
        assert_eq!(
            world.state_of(order).await,
            before,
            "nothing changed, token id not kept"
        );
    }
    let missing = world
        .store
        .record_report(&report(Uuid::now_v7(), OrderStatus::Shipped, "r-1"))
        .await
        .unwrap();
    assert_eq!(missing, ReportOutcome::NotRouted);
    assert_eq!(world.token_ids().await, 0);
}

async fn out_of_order_reports_keep_sequence_and_never_move_the_order_back(backend: TestBackend) {
    let (world, order) = routed_world(backend).await;
    let shipped = AuthenticatedReport {
        occurred_at: start() - Duration::minutes(1),
        ..report(order, OrderStatus::Shipped, "r-2")
    };
    let received = AuthenticatedReport {
        occurred_at: start() - Duration::minutes(9),
        ..report(order, OrderStatus::ReceivedByPartner, "r-1")
    };
    world.store.record_report(&shipped).await.unwrap();
    world.store.record_report(&received).await.unwrap();
    let history = world.history(order).await;
    let tail: Vec<_> = history
        .iter()
        .skip(2)
        .map(|e| (e.seq, e.status.as_str(), e.occurred_at))
        .collect();
    assert_eq!(
        tail,
        vec![
            (3, "SHIPPED", start() - Duration::minutes(1)),
            (4, "RECEIVED_BY_PARTNER", start() - Duration::minutes(9)),
        ]
    );
    assert_eq!(world.order_row(order).await.status, "SHIPPED");
    assert_eq!(
        world.dispatch_row(order).await.state,
        "ACKNOWLEDGED",
        "SHIPPED shows the partner has it"
    );
}

async fn reports_after_delivered_are_kept_and_flagged(backend: TestBackend) {
    let (world, order) = routed_world(backend).await;
    world
        .store
        .record_report(&AuthenticatedReport {
            tracking_id: "T1".into(),
            ..report(order, OrderStatus::Delivered, "r-1")
        })
        .await
        .unwrap();
    let late = AuthenticatedReport {
        tracking_id: "T9".into(),
        detail: "parcel damaged".into(),
        ..report(order, OrderStatus::Exception, "r-2")
    };
    let outcome = world.store.record_report(&late).await.unwrap();
    let ReportOutcome::Accepted { effects, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(effects.needs_review);
    let event = world.history(order).await.pop().unwrap();
    assert_eq!(
        (event.status.as_str(), event.needs_review),
        ("EXCEPTION", true)
    );
    let row = world.order_row(order).await;
    assert_eq!(row.status, "DELIVERED", "not applied silently");
    assert_eq!(row.tracking_id.as_deref(), Some("T1"));
    // Not even a rejection moves a delivered order.
    world
        .store
        .record_report(&report(order, OrderStatus::RejectedByPartner, "r-3"))
        .await
        .unwrap();
    assert_eq!(world.dispatch_row(order).await.state, "ACKNOWLEDGED");
    assert!(world.rejections(order).await.is_empty());
}

async fn a_rejection_puts_the_order_back_for_routing_and_remembers_the_partner(
    backend: TestBackend,
) {
    let (world, order) = routed_world(backend).await;
    let mut wake = world.db.feed().subscribe();
    let rejection = AuthenticatedReport {
        detail_code: "OUT_OF_AREA".into(),
        ..report(order, OrderStatus::RejectedByPartner, "r-1")
    };
    let outcome = world.store.record_report(&rejection).await.unwrap();
    let ReportOutcome::Accepted { effects, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(effects.reroute);
    assert_eq!(world.rejections(order).await, vec!["acme".to_owned()]);
    let dispatch = world.dispatch_row(order).await;
    assert_eq!(
        (
            dispatch.state.as_str(),
            dispatch.partner_id,
            dispatch.ack_due_at
        ),
        ("PENDING", None, None)
    );
    assert!(
        dispatch
            .last_error
            .unwrap()
            .contains("rejected by partner acme")
    );
    let row = world.order_row(order).await;
    assert_eq!(
        (row.status.as_str(), row.partner_id),
        ("REJECTED_BY_PARTNER", None)
    );
    // The relay is woken (in-process on SQLite, by NOTIFY on Postgres).
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            if let Ok(waybill_service_kit::db::Change::Outbox) = wake.recv().await {
                break;
            }
        }
    })
    .await
    .expect("the outbox change is announced");
    // The rejecting partner's retry is a duplicate; anything new from it is refused.
    assert_eq!(
        world
            .store
            .record_report(&report(order, OrderStatus::RejectedByPartner, "r-1"))
            .await
            .unwrap(),
        ReportOutcome::Duplicate
    );
    assert_eq!(
        world
            .store
            .record_report(&report(order, OrderStatus::Shipped, "r-2"))
            .await
            .unwrap(),
        ReportOutcome::NotRouted
    );
    // Routed to the next partner, that one reports as usual.
    world.route(order, "globex").await;
    let next = AuthenticatedReport {
        partner_id: "globex".into(),
        ..report(order, OrderStatus::ReceivedByPartner, "g-1")
    };
    assert!(matches!(
        world.store.record_report(&next).await.unwrap(),
        ReportOutcome::Accepted { .. }
    ));
    assert_eq!(world.dispatch_row(order).await.state, "ACKNOWLEDGED");
}

async fn acknowledging_fences_a_relay_batch_in_flight(backend: TestBackend) {
    let (world, order) = routed_world(backend).await;
    world.lease(order, "relay-1").await;
    world
        .store
        .record_report(&report(order, OrderStatus::ReceivedByPartner, "r-1"))
        .await
        .unwrap();
    let dispatch = world.dispatch_row(order).await;
    assert_eq!(
        (dispatch.state.as_str(), dispatch.lease_owner),
        ("ACKNOWLEDGED", None)
    );
}

async fn a_report_id_reused_for_another_order_is_refused(backend: TestBackend) {
    let (world, order) = routed_world(backend).await;
    let other = world.order().await;
    world.route(other, "acme").await;
    world
        .store
        .record_report(&report(order, OrderStatus::Shipped, "r-1"))
        .await
        .unwrap();
    let before = world.state_of(other).await;
    assert_eq!(
        world
            .store
            .record_report(&report(other, OrderStatus::Shipped, "r-1"))
            .await
            .unwrap(),
        ReportOutcome::ReportIdReused
    );
    assert_eq!(world.state_of(other).await, before);
}

async fn concurrent_retries_of_one_report_append_once(backend: TestBackend) {
    let (world, order) = routed_world(backend).await;
    let calls = (0..10).map(|_| {
        let store = world.store.clone();
        let report = report(order, OrderStatus::Shipped, "r-1");
        tokio::spawn(async move { store.record_report(&report).await.unwrap() })
    });
    let outcomes = futures::future::join_all(calls).await;
    let accepted = outcomes
        .iter()
        .filter(|o| matches!(o.as_ref().unwrap(), ReportOutcome::Accepted { .. }))
        .count();
    let duplicates = outcomes
        .iter()
        .filter(|o| matches!(o.as_ref().unwrap(), ReportOutcome::Duplicate))
        .count();
    assert_eq!((accepted, duplicates), (1, 9));
    assert_eq!(
        world
            .history(order)
            .await
            .iter()
            .filter(|e| e.status == "SHIPPED")
            .count(),
        1
    );
}

async fn expired_token_ids_are_purged(backend: TestBackend) {
    let (world, order) = routed_world(backend).await;
    let old = AuthenticatedReport {
        token_id_kept_until: start() + Duration::minutes(1),
        ..report(order, OrderStatus::ReceivedByPartner, "r-1")
    };
    let young = AuthenticatedReport {
        token_id_kept_until: start() + Duration::minutes(6),
        ..report(order, OrderStatus::Shipped, "r-2")
    };
    world.store.record_report(&old).await.unwrap();
    world.store.record_report(&young).await.unwrap();
    assert_eq!(
        world
            .store
            .purge_token_ids(start() + Duration::minutes(1))
            .await
            .unwrap(),
        0,
        "kept until, inclusive"
    );
    assert_eq!(
        world
            .store
            .purge_token_ids(start() + Duration::minutes(2))
            .await
            .unwrap(),
        1
    );
    assert_eq!(world.token_ids().await, 1);
}

async fn keys_are_read_with_their_revocation(backend: TestBackend) {
    let world = World::new(backend).await;
    world.partner("acme").await;
    let signer = common::signer(1, "k1");
    world.key("acme", &signer).await;
    let key = world
        .store
        .partner_key("acme", "k1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(key.public_key, signer.verifying_key().to_bytes().to_vec());
    assert_eq!(key.revoked_at, None);
    assert_eq!(world.store.partner_key("acme", "k2").await.unwrap(), None);
    assert_eq!(world.store.partner_key("globex", "k1").await.unwrap(), None);
    world.revoke("acme", "k1").await;
    assert_eq!(
        world
            .store
            .partner_key("acme", "k1")
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(start())
    );
}
