//! One conformance suite for every `DispatchStore`, run against Postgres and SQLite: leasing,
//! the fence, bookkeeping, event publishing, operator retries, audit copies (partners, keys,
//! routes and paging: `store_admin.rs`).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use chrono::Duration as Span;
use common::{
    Harness,
    batch::{fence, lease, sent},
};
use prost::Message;
use uuid::Uuid;
use waybill_dispatcher::{
    domain::model::DispatchFilter,
    store::{AttemptLog, AuditCopy, BatchRecord, Fence, Lease, RowUpdate},
};
use waybill_proto::v1::{DispatchState, DispatchedOrder};
use waybill_service_kit::{db::Id, on_pool};
use waybill_test_kit::{TestBackend, eventually, on_both_backends};

on_both_backends!(
    leases_only_due_unleased_rows,
    rows_placed_before_the_outbox_carried_messages_get_them_built,
    concurrent_leases_never_overlap,
    bookkeeping_is_fenced_and_appends_one_event,
    released_leases_are_due_at_once,
    events_are_published_at_least_once,
    backlog_counts_states_and_oldest_due,
    operator_retry_takes_only_retryable_rows,
    audit_copies_wait_until_delivered,
);

/// Outbox rows written before migration 0005 have no message: the lease builds it from the
/// order tables, byte for byte what Orders stores at placing now.
async fn rows_placed_before_the_outbox_carried_messages_get_them_built(backend: TestBackend) {
    let h = Harness::new(backend).await;
    let stored = h.place("DE", 250).await;
    let legacy = h.place("DE", 300).await;
    let stored_message: Vec<u8> = on_pool!(h.db.backend(), |pool| {
        sqlx::query("UPDATE dispatch SET message = NULL WHERE order_id = $1")
            .bind(Id(legacy))
            .execute(pool)
            .await
            .unwrap();
        sqlx::query_scalar("SELECT message FROM dispatch WHERE order_id = $1")
            .bind(Id(stored))
            .fetch_one(pool)
            .await
            .unwrap()
    });
    let leased = h.store.lease_due(&lease(&h, "a", 10)).await.unwrap();
    assert_eq!(leased.orders.len(), 2);
    let by_id = |id: Uuid| leased.orders.iter().find(|o| o.order_id == id).unwrap();
    assert_eq!(by_id(stored).message, stored_message);
    let built = DispatchedOrder::decode(by_id(legacy).message.as_slice()).unwrap();
    let original = DispatchedOrder::decode(stored_message.as_slice()).unwrap();
    assert_eq!(
        built,
        DispatchedOrder {
            order_id: legacy.to_string(),
            total: built.total.clone(),
            lines: built.lines.clone(),
            ..original
        },
        "the same message but for the order's own id and amounts"
    );
    assert_eq!(built.total.unwrap().minor_units, 300);
    assert_eq!(built.lines[0].line_total.as_ref().unwrap().minor_units, 300);
    assert_eq!(
        (
            by_id(legacy).total_minor,
            by_id(legacy).ship_to.country_code.as_str()
        ),
        (300, "DE")
    );
}

async fn leases_only_due_unleased_rows(backend: TestBackend) {
    let h = Harness::new(backend).await;
    let due = h.place("DE", 100).await;
    let later = h
        .place_at("DE", 100, h.clock_now() + Span::seconds(5))
        .await;

    let first = lease(&h, "a", 10);
    let leased = h.store.lease_due(&first).await.unwrap();
    assert_eq!(
        leased.orders.iter().map(|o| o.order_id).collect::<Vec<_>>(),
        [due],
        "only what is due now"
    );
    let order = &leased.orders[0];
    assert_eq!(order.state, DispatchState::Pending);
    // The row's own message: the order as Orders stored it, nothing read from the order tables.
    let message = DispatchedOrder::decode(order.message.as_slice()).unwrap();
    assert_eq!(message.order_id, due.to_string());
    assert_eq!(message.lines.len(), 1);
    assert_eq!(message.recipient.unwrap().name, "Ada Lovelace");
    assert!(
        message.partner_id.is_empty() && message.send_count == 0,
        "no per-send fields"
    );
    assert_eq!(
        (order.total_minor, order.currency_code.as_str()),
        (100, "USD")
    );
    assert_eq!(order.ship_to.country_code, "DE");
    assert!(order.traceparent.starts_with("00-"));
    assert!(h.held(due).await);
    let row = h.dispatch(due).await;
    if matches!(backend, TestBackend::Sqlite) {
        // SQLite's lease is written into the row; Postgres's is the row lock alone.
        assert_eq!(
            (row.lease_owner.as_deref(), row.lease_expires_at),
            (Some("a"), Some(first.expires_at))
        );
    }

    assert!(
        h.store
            .lease_due(&lease(&h, "b", 10))
            .await
            .unwrap()
            .orders
            .is_empty(),
        "a live lease is skipped"
    );
    h.clock.advance(Span::seconds(30));
    if matches!(backend, TestBackend::Postgres) {
        // A Postgres lease ends with its transaction (here: given back, as when its instance
        // crashed or the server ended its idle transaction), not with the clock.
        let probe = h.store.lease_due(&lease(&h, "b", 10)).await.unwrap();
        assert!(
            probe.orders.iter().all(|o| o.order_id != due),
            "a lease whose transaction runs is skipped, whatever the clock says"
        );
        h.store.release(probe).await.unwrap();
        h.store.release(leased).await.unwrap();
    }
    let taken = h.store.lease_due(&lease(&h, "b", 10)).await.unwrap();
    let ids: HashSet<Uuid> = taken.orders.iter().map(|o| o.order_id).collect();
    assert_eq!(
        ids,
        HashSet::from([due, later]),
        "an ended lease is taken over; the later row is due now"
    );
    assert!(
        h.store
            .lease_overdue(&lease(&h, "c", 10))
            .await
            .unwrap()
            .orders
            .is_empty()
    );
}

async fn concurrent_leases_never_overlap(backend: TestBackend) {
    let h = Harness::new(backend).await;
    let orders: Vec<_> = (0..400)
        .map(|_| common::fixture::FixtureOrder::new("DE", 1, h.clock_now()))
        .collect();
    common::fixture::insert_orders(&h.db, &orders)
        .await
        .unwrap();
    let leases = (0..8).map(|i| {
        let store = h.store.clone();
        let request = lease(&h, &format!("owner-{i}"), 60);
        tokio::spawn(async move { store.lease_due(&request).await.unwrap() })
    });
    // Every lease is kept until all are counted: a Postgres lease given back frees its rows.
    let mut held = Vec::new();
    for handle in leases {
        held.push(handle.await.unwrap());
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for leased in &held {
        for order in &leased.orders {
            total += 1;
            assert!(
                seen.insert(order.order_id),
                "order {} leased twice",
                order.order_id
            );
        }
    }
    assert_eq!(total, 400, "8 × 60 ≥ 400: every row leased exactly once");
}

async fn bookkeeping_is_fenced_and_appends_one_event(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 1).await;
    let order = h.place("DE", 100).await;
    let request = lease(&h, "a", 10);
    let leased = h.store.lease_due(&request).await.unwrap();
    let now = h.clock_now();
    let batch = BatchRecord {
        updates: vec![sent(order, now)],
        first_sends: vec![(order, "acme".to_owned())],
        attempts: vec![AttemptLog {
            order_id: order,
            attempt: 1,
            error: String::new(),
            partner_id: "acme".into(),
            topic: "t".into(),
        }],
        audit_copies: vec![],
    };

    let wrong = Fence {
        owner: "a".to_owned(),
        batch_id: Uuid::new_v4(),
    };
    let refused = h
        .store
        .record(Lease::new(wrong, Vec::new()), &batch, now)
        .await
        .unwrap();
    assert_eq!(
        (refused.applied.len(), refused.fenced.clone()),
        (0, vec![order])
    );
    assert_eq!(
        h.history(order).await.len(),
        1,
        "a refused batch writes nothing"
    );
    assert!(
        h.store
            .get_dispatch(order)
            .await
            .unwrap()
            .unwrap()
            .1
            .is_empty()
    );

    let report = h.store.record(leased, &batch, now).await.unwrap();
    assert_eq!(
        (report.applied.clone(), report.events_appended.clone()),
        (vec![order], vec![order])
    );
    let (row, attempts) = h.store.get_dispatch(order).await.unwrap().unwrap();
    assert_eq!(row.state, DispatchState::Sent);
    assert_eq!(
        (row.partner_id.as_deref(), row.route_id.as_deref()),
        (Some("acme"), Some("acme-DE"))
    );
    assert_eq!((row.lease_owner, row.last_error), (None, None));
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        h.history(order).await,
        [
            (1, "PLACED".to_owned(), String::new()),
            (2, "SENT_TO_PARTNER".to_owned(), "acme".to_owned())
        ]
    );

    // The same fence cannot be used twice (the lease ended with the bookkeeping).
    assert_eq!(
        h.store
            .record(Lease::new(fence(&request), Vec::new()), &batch, now)
            .await
            .unwrap()
            .fenced,
        [order]
    );

    // Unacknowledged at its deadline, retried by an operator and sent again: the history does
    // not get a second SENT_TO_PARTNER.
    h.clock.advance(Span::minutes(10));
    let overdue = h.store.lease_overdue(&lease(&h, "b", 10)).await.unwrap();
    assert_eq!(overdue.orders.len(), 1);
    let flagged = RowUpdate {
        state: DispatchState::Unacknowledged,
        ack_due_at: None,
        ..sent(order, h.clock_now())
    };
    h.store
        .record(
            overdue,
            &BatchRecord {
                updates: vec![flagged],
                ..BatchRecord::default()
            },
            h.clock_now(),
        )
        .await
        .unwrap();
    assert_eq!(
        h.store
            .retry(&[order], &DispatchFilter::default(), h.clock_now())
            .await
            .unwrap(),
        [order]
    );
    let again = h.store.lease_due(&lease(&h, "c", 10)).await.unwrap();
    assert_eq!(again.orders.len(), 1);
    let resent = BatchRecord {
        updates: vec![sent(order, h.clock_now())],
        first_sends: vec![(order, "acme".to_owned())],
        attempts: vec![],
        audit_copies: vec![],
    };
    let report = h.store.record(again, &resent, h.clock_now()).await.unwrap();
    assert_eq!(
        (report.applied, report.events_appended),
        (vec![order], vec![])
    );
    assert_eq!(
        h.history(order).await.len(),
        2,
        "still PLACED, SENT_TO_PARTNER"
    );
}

async fn released_leases_are_due_at_once(backend: TestBackend) {
    let h = Harness::new(backend).await;
    let order = h.place("DE", 100).await;
    let leased = h.store.lease_due(&lease(&h, "a", 10)).await.unwrap();
    match backend {
        // What a stopping instance does: every lease its owner wrote is cleared.
        TestBackend::Sqlite => {
            assert_eq!(h.store.release_leases("a", h.clock_now()).await.unwrap(), 1);
        }
        // Nothing is written to lease on Postgres; a lease is given back by its transaction.
        TestBackend::Postgres => {
            assert_eq!(h.store.release_leases("a", h.clock_now()).await.unwrap(), 0);
            h.store.release(leased).await.unwrap();
        }
    }
    let taken = h.store.lease_due(&lease(&h, "b", 10)).await.unwrap();
    assert_eq!(
        taken.orders.iter().map(|o| o.order_id).collect::<Vec<_>>(),
        [order],
        "no waiting for expiry"
    );
    // A lease given back by itself is due at once too, on both backends.
    h.store.release(taken).await.unwrap();
    assert_eq!(
        h.store
            .lease_due(&lease(&h, "c", 10))
            .await
            .unwrap()
            .orders
            .len(),
        1
    );
}

async fn events_are_published_at_least_once(backend: TestBackend) {
    let h = Harness::new(backend).await;
    let order = h.place("DE", 100).await;
    let batch = h.claim_events(10).await;
    assert_eq!(
        batch
            .events()
            .iter()
            .map(|e| (e.order_id, e.seq))
            .collect::<Vec<_>>(),
        [(order, 1)]
    );
    assert_eq!(batch.events()[0].customer_email, "ada@example.com");
    batch.release().await.unwrap();
    // Not marked: offered again. (Released explicitly, the events are free at once; a batch
    // merely dropped frees them when its connection is next used, hence the bounded wait.)
    let batch = eventually(
        std::time::Duration::from_secs(5),
        "the released event offered again",
        || async {
            let batch = h.claim_events(10).await;
            (batch.events().len() == 1).then_some(batch)
        },
    )
    .await;
    batch.mark_published(h.clock_now()).await.unwrap();
    assert!(h.claim_events(10).await.events().is_empty());
    h.report(order, "SHIPPED", "acme").await;
    // The publisher's watermark holds an event back while an older transaction runs on the
    // server (another test's, on Postgres): wait for it as the relay tests do.
    let batch = eventually(
        std::time::Duration::from_secs(5),
        "the SHIPPED event offered",
        || async {
            let batch = h.claim_events(10).await;
            (!batch.events().is_empty()).then_some(batch)
        },
    )
    .await;
    assert_eq!(
        batch
            .events()
            .iter()
            .map(|e| (e.seq, e.status.as_str()))
            .collect::<Vec<_>>(),
        [(2, "SHIPPED")]
    );
}

async fn backlog_counts_states_and_oldest_due(backend: TestBackend) {
    let h = Harness::new(backend).await;
    let oldest = h.clock_now() - Span::seconds(90);
    h.place_at("DE", 1, oldest).await;
    h.place("DE", 1).await;
    h.place_at("DE", 1, h.clock_now() + Span::hours(1)).await;
    let backlog = h.store.backlog(h.clock_now()).await.unwrap();
    assert_eq!(backlog.by_state, [(DispatchState::Pending, 3)]);
    assert_eq!(backlog.oldest_due_at, Some(oldest));
    // The next event to publish is the oldest order's PLACED; none once all are published.
    assert_eq!(backlog.oldest_unpublished_at, Some(oldest));
    let batch = h.claim_events(10).await;
    assert_eq!(batch.events().len(), 3);
    batch.mark_published(h.clock_now()).await.unwrap();
    let backlog = h.store.backlog(h.clock_now()).await.unwrap();
    assert_eq!(backlog.oldest_unpublished_at, None);
}

async fn operator_retry_takes_only_retryable_rows(backend: TestBackend) {
    let h = Harness::new(backend).await;
    let dead = h.place_at("DE", 1, h.clock_now() - Span::seconds(3)).await;
    let unroutable = h.place_at("DE", 1, h.clock_now() - Span::seconds(2)).await;
    let pending = h.place_at("DE", 1, h.clock_now() - Span::seconds(1)).await;
    let request = lease(&h, "a", 2);
    let leased = h.store.lease_due(&request).await.unwrap();
    assert_eq!(leased.orders.len(), 2);
    let now = h.clock_now();
    let mut updates = Vec::new();
    for order in &leased.orders {
        let state = if order.order_id == dead {
            DispatchState::Dead
        } else {
            DispatchState::Unroutable
        };
        updates.push(RowUpdate {
            state,
            attempts: 4,
            last_error: Some("boom".into()),
            ..sent(order.order_id, now)
        });
    }
    assert_eq!(
        leased
            .orders
            .iter()
            .filter(|o| [dead, unroutable].contains(&o.order_id))
            .count(),
        2,
        "oldest first"
    );
    h.store
        .record(
            leased,
            &BatchRecord {
                updates,
                ..BatchRecord::default()
            },
            now,
        )
        .await
        .unwrap();

    let by_filter = DispatchFilter {
        state: Some(DispatchState::Dead),
        partner_id: None,
    };
    assert_eq!(h.store.retry(&[], &by_filter, now).await.unwrap(), [dead]);
    let row = h.dispatch(dead).await;
    assert_eq!(
        (row.state, row.attempts, row.next_attempt_at),
        (DispatchState::Pending, 0, now)
    );
    assert_eq!(
        row.last_error.as_deref(),
        Some("boom"),
        "the last error stays visible"
    );
    assert!(
        h.store
            .retry(&[pending], &DispatchFilter::default(), now)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        h.store
            .retry(&[unroutable, pending], &DispatchFilter::default(), now)
            .await
            .unwrap(),
        [unroutable]
    );
}

async fn audit_copies_wait_until_delivered(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 1).await;
    let fenced_out = h.place("DE", 100).await;
    let order = h.place("DE", 100).await;
    let first = h.store.lease_due(&lease(&h, "a", 10)).await.unwrap();
    assert_eq!(first.orders.len(), 2);
    let now = h.clock_now();
    let copy = |order_id| AuditCopy {
        order_id,
        topic: "audit".to_owned(),
        payload: vec![0, 1, 2, 255],
        headers: vec![("waybill-type".to_owned(), "audit".to_owned())],
        attempts: 1,
        last_error: "broker down".to_owned(),
        due_at: now + Span::seconds(5),
    };
    // The fence holds for audit copies too: a row taken over keeps no copy of this batch.
    h.store.release(first).await.unwrap();
    let taken = h.store.lease_due(&lease(&h, "b", 1)).await.unwrap();
    assert_eq!(taken.orders.len(), 1);
    let (mine, theirs) = if taken.orders[0].order_id == order {
        (order, fenced_out)
    } else {
        (fenced_out, order)
    };
    let batch = BatchRecord {
        updates: vec![sent(mine, now), sent(theirs, now)],
        audit_copies: vec![copy(mine), copy(theirs)],
        ..BatchRecord::default()
    };
    let report = h.store.record(taken, &batch, now).await.unwrap();
    assert_eq!((report.applied, report.fenced), (vec![mine], vec![theirs]));

    assert!(
        h.store
            .claim_audits(now, 10)
            .await
            .unwrap()
            .copies()
            .is_empty(),
        "not due yet"
    );
    assert_eq!(h.store.backlog(now).await.unwrap().audit_pending, 1);
    let later = now + Span::seconds(5);
    let claimed = h.store.claim_audits(later, 10).await.unwrap();
    assert_eq!(claimed.copies(), [copy(mine)]);
    let failed = AuditCopy {
        attempts: 2,
        last_error: "still down".to_owned(),
        due_at: later + Span::seconds(10),
        ..copy(mine)
    };
    claimed
        .settle(&[], std::slice::from_ref(&failed))
        .await
        .unwrap();
    assert!(
        h.store
            .claim_audits(later, 10)
            .await
            .unwrap()
            .copies()
            .is_empty()
    );
    let claimed = h.store.claim_audits(failed.due_at, 10).await.unwrap();
    assert_eq!(claimed.copies(), [failed]);
    claimed.settle(&[mine], &[]).await.unwrap();
    assert!(
        h.store
            .claim_audits(later + Span::days(1), 10)
            .await
            .unwrap()
            .copies()
            .is_empty()
    );
    assert_eq!(h.store.backlog(later).await.unwrap().audit_pending, 0);
}
