//! One conformance suite for every `OrderStore` implementation: each case runs against a fresh
//! Postgres database and a fresh SQLite file.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;

use sqlx::Executor;
use support::{append_event, at, dispatch_row, fixture, new_order, row_counts};
use waybill_orders::{
    domain::page_token::PageCursor,
    store::{Placement, StoreError},
};
use waybill_proto::v1::OrderStatus;
use waybill_service_kit::db::Backend;
use waybill_test_kit::{TestBackend, on_both_backends};

on_both_backends!(
    place_writes_order_lines_event_and_dispatch_row,
    catalog_lookup_returns_known_skus_only,
    replay_with_same_request_returns_original_and_writes_nothing,
    same_key_with_different_request_is_a_conflict,
    twenty_concurrent_calls_with_one_key_create_one_order,
    failure_after_lines_leaves_no_rows_at_all,
    concurrent_orders_are_written_and_only_the_refused_one_fails,
    list_orders_pages_newest_first_per_customer,
    history_after_returns_only_newer_events,
    unknown_order_is_none,
);

async fn place_writes_order_lines_event_and_dispatch_row(backend: TestBackend) {
    let f = fixture(backend).await;
    let order = new_order("k1", "c1", at(0));
    let Placement::Created(created) = f.store.place_order(&order).await.unwrap() else {
        panic!("expected a new order");
    };
    let stored = f.store.get_order(order.id).await.unwrap().unwrap();
    assert_eq!(stored, created, "what place returns is what get reads back");
    assert_eq!(stored.lines, order.lines);
    assert_eq!(stored.total_minor, 3399);
    assert_eq!(stored.placed_at, at(0));
    assert_eq!(stored.ship_to, order.ship_to);
    assert_eq!(stored.history.len(), 1);
    assert_eq!(stored.history[0].status, OrderStatus::Placed);
    assert_eq!(stored.history[0].seq, 1);
    assert_eq!(row_counts(&f.db).await, (1, 2, 1, 1));
    let (state, traceparent, tracestate, next_at) = dispatch_row(&f.db, order.id).await;
    assert_eq!(state, "PENDING");
    assert_eq!(traceparent, order.traceparent);
    assert_eq!(tracestate, "vendor=1");
    assert_eq!(next_at, at(0).timestamp_micros(), "due at once");
}

async fn catalog_lookup_returns_known_skus_only(backend: TestBackend) {
    let f = fixture(backend).await;
    let mut items = f
        .store
        .catalog_items(&["MUG-001".into(), "NOPE".into(), "TEA-EARL".into()])
        .await
        .unwrap();
    items.sort_by(|a, b| a.sku.cmp(&b.sku));
    let summary: Vec<_> = items
        .iter()
        .map(|i| {
            (
                i.sku.as_str(),
                i.unit_price_minor,
                i.currency_code.as_str(),
                i.active,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("MUG-001", 1250, "USD", true),
            ("TEA-EARL", 650, "EUR", true)
        ]
    );
    assert!(f.store.catalog_items(&[]).await.unwrap().is_empty());
}

async fn replay_with_same_request_returns_original_and_writes_nothing(backend: TestBackend) {
    let f = fixture(backend).await;
    let first = new_order("k1", "c1", at(0));
    f.store.place_order(&first).await.unwrap();
    // A retry: new id and time (the service assigns them per call), same key and request.
    let mut retry = new_order("k1", "c1", at(5));
    retry.request_hash = first.request_hash.clone();
    match f.store.place_order(&retry).await.unwrap() {
        Placement::Replayed(order) => {
            assert_eq!(order.id, first.id);
            assert_eq!(order.placed_at, at(0));
        }
        Placement::Created(_) => panic!("a replay must not create an order"),
    }
    assert_eq!(row_counts(&f.db).await, (1, 2, 1, 1));
}

async fn same_key_with_different_request_is_a_conflict(backend: TestBackend) {
    let f = fixture(backend).await;
    let first = new_order("k1", "c1", at(0));
    f.store.place_order(&first).await.unwrap();
    let mut other = new_order("k1", "c1", at(1));
    other.request_hash = b"another request".to_vec();
    match f.store.place_order(&other).await {
        Err(StoreError::IdempotencyConflict { key, order_id }) => {
            assert_eq!(key, "k1");
            assert_eq!(order_id, first.id);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(row_counts(&f.db).await, (1, 2, 1, 1));
}

async fn twenty_concurrent_calls_with_one_key_create_one_order(backend: TestBackend) {
    let f = fixture(backend).await;
    let calls = (0..20).map(|i| {
        let store = f.store.clone();
        let mut order = new_order("same-key", "c1", at(i));
        order.request_hash = b"same request".to_vec();
        tokio::spawn(async move { store.place_order(&order).await })
    });
    let results = futures::future::join_all(calls).await;
    let mut created = 0;
    let mut ids = HashSet::new();
    for result in results {
        match result.unwrap().unwrap() {
            Placement::Created(order) => {
                created += 1;
                ids.insert(order.id);
            }
            Placement::Replayed(order) => {
                ids.insert(order.id);
            }
        }
    }
    assert_eq!(created, 1, "exactly one call creates");
    assert_eq!(ids.len(), 1, "every call sees the same order");
    assert_eq!(row_counts(&f.db).await, (1, 2, 1, 1));
}

async fn failure_after_lines_leaves_no_rows_at_all(backend: TestBackend) {
    let f = fixture(backend).await;
    // Inject a failure into the last write of the transaction (the dispatch row), after the
    // order, its lines and its PLACED event were written.
    refuse_inserts_into(&f.db, "dispatch", "TRUE").await;
    let result = f.store.place_order(&new_order("k1", "c1", at(0))).await;
    assert!(matches!(result, Err(StoreError::Database(_))), "{result:?}");
    assert_eq!(
        row_counts(&f.db).await,
        (0, 0, 0, 0),
        "nothing of the order may remain"
    );
}

/// Concurrent placings (on Postgres one statement for all that queued together): every order is
/// written whole, and an order the database refuses fails alone, leaving no row behind.
async fn concurrent_orders_are_written_and_only_the_refused_one_fails(backend: TestBackend) {
    let f = fixture(backend).await;
    refuse_inserts_into(&f.db, "orders", "NEW.customer_id = 'refused'").await;
    let calls = (0..30).map(|i| {
        let store = f.store.clone();
        let customer = if i == 17 {
            "refused".to_owned()
        } else {
            format!("c{i}")
        };
        let order = new_order(&format!("key-{i}"), &customer, at(i));
        tokio::spawn(async move { (order.id, store.place_order(&order).await) })
    });
    let mut written = Vec::new();
    for call in futures::future::join_all(calls).await {
        match call.unwrap() {
            (id, Ok(Placement::Created(order))) => {
                assert_eq!(order.id, id);
                written.push(id);
            }
            (_, Err(StoreError::Database(error))) => {
                assert!(error.to_string().contains("injected failure"), "{error}");
            }
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(written.len(), 29, "every order but the refused one");
    assert_eq!(row_counts(&f.db).await, (29, 58, 29, 29));
    for id in written {
        let order = f.store.get_order(id).await.unwrap().unwrap();
        assert_eq!((order.lines.len(), order.history.len()), (2, 1), "{id}");
    }
}

/// A trigger that refuses, with "injected failure", every row inserted into `table` for which
/// `when` (SQL over `NEW`, the same on both backends) holds.
async fn refuse_inserts_into(db: &waybill_service_kit::db::Database, table: &str, when: &str) {
    match db.backend() {
        Backend::Postgres(pool) => pool
            .execute(
                format!(
                    "CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS \
                     $$ BEGIN IF {when} THEN RAISE EXCEPTION 'injected failure'; END IF; \
                     RETURN NEW; END $$; \
                     CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} \
                     FOR EACH ROW EXECUTE FUNCTION refuse_{table}();"
                )
                .as_str(),
            )
            .await
            .map(drop)
            .unwrap(),
        Backend::Sqlite(pool) => pool
            .execute(
                format!(
                    "CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} WHEN {when} \
                     BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
                )
                .as_str(),
            )
            .await
            .map(drop)
            .unwrap(),
    };
}

async fn list_orders_pages_newest_first_per_customer(backend: TestBackend) {
    let f = fixture(backend).await;
    let mut placed = Vec::new();
    for i in 0..5 {
        let order = new_order(&format!("k{i}"), "c1", at(i));
        f.store.place_order(&order).await.unwrap();
        placed.push(order.id);
    }
    // Same time as the newest: the id breaks the tie, so paging never skips or repeats.
    let twin = new_order("k-twin", "c1", at(4));
    f.store.place_order(&twin).await.unwrap();
    f.store
        .place_order(&new_order("other", "c2", at(9)))
        .await
        .unwrap();

    let first = f.store.list_orders("c1", None, 4).await.unwrap();
    assert_eq!(first.len(), 4);
    assert!(first.iter().all(|o| o.customer.id == "c1"));
    assert!(
        first
            .iter()
            .all(|o| o.lines.len() == 2 && o.history.len() == 1)
    );
    let last = first.last().unwrap();
    let rest = f
        .store
        .list_orders(
            "c1",
            Some(PageCursor {
                placed_at: last.placed_at,
                id: last.id,
            }),
            4,
        )
        .await
        .unwrap();
    let mut seen: Vec<_> = first.iter().chain(&rest).map(|o| o.id).collect();
    assert_eq!(seen.len(), 6);
    let times: Vec<_> = first.iter().chain(&rest).map(|o| o.placed_at).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    seen.sort();
    let mut expected = placed.clone();
    expected.push(twin.id);
    expected.sort();
    assert_eq!(seen, expected, "every order exactly once");
    assert!(
        f.store
            .list_orders("nobody", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn history_after_returns_only_newer_events(backend: TestBackend) {
    let f = fixture(backend).await;
    let order = new_order("k1", "c1", at(0));
    f.store.place_order(&order).await.unwrap();
    append_event(
        &f.db,
        order.id,
        OrderStatus::SentToPartner,
        "contoso",
        at(1),
    )
    .await;
    append_event(
        &f.db,
        order.id,
        OrderStatus::ReceivedByPartner,
        "contoso",
        at(2),
    )
    .await;
    let all = f.store.history_after(order.id, 0).await.unwrap();
    let statuses: Vec<_> = all.iter().map(|e| (e.seq, e.status)).collect();
    assert_eq!(
        statuses,
        vec![
            (1, OrderStatus::Placed),
            (2, OrderStatus::SentToPartner),
            (3, OrderStatus::ReceivedByPartner)
        ]
    );
    let newer = f.store.history_after(order.id, 2).await.unwrap();
    assert_eq!(newer.len(), 1);
    assert_eq!(newer[0].partner_id, "contoso");
    assert_eq!(newer[0].occurred_at, at(2));
    let stored = f.store.get_order(order.id).await.unwrap().unwrap();
    assert_eq!(stored.partner_id(), Some("contoso"));
    assert_eq!(stored.status(), OrderStatus::ReceivedByPartner);
}

async fn unknown_order_is_none(backend: TestBackend) {
    let f = fixture(backend).await;
    assert!(
        f.store
            .get_order(uuid::Uuid::now_v7())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        f.store
            .history_after(uuid::Uuid::now_v7(), 0)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Postgres: a report that commits between the reads of GetOrder (the order's row, then its
/// history) is seen whole or not at all. The history table is locked so that the read stops
/// between the two statements while the "report" commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_order_reads_the_row_and_its_history_in_one_snapshot() {
    let f = fixture(TestBackend::Postgres).await;
    let order = new_order("k-snapshot", "c1", at(0));
    f.store.place_order(&order).await.unwrap();
    let Backend::Postgres(pool) = f.db.backend() else {
        unreachable!()
    };
    let mut report = pool.acquire().await.unwrap();
    report.execute("BEGIN").await.unwrap();
    report
        .execute("LOCK TABLE order_status_events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let store = f.store.clone();
    let reading = tokio::spawn(async move { store.get_order(order.id).await });
    waybill_test_kit::eventually(
        std::time::Duration::from_secs(10),
        "GetOrder waiting for the history",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            waiting == 1
        },
    )
    .await;
    // The report: the order's row and its history change together, and commit.
    sqlx::query(
        "UPDATE orders SET status_seq = status_seq + 1, status = 'RECEIVED_BY_PARTNER', \
         tracking_id = 'LATE-1' WHERE id = $1",
    )
    .bind(order.id)
    .execute(&mut *report)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO order_status_events (order_id, seq, status, partner_id, tracking_id, \
         occurred_at, recorded_at) VALUES ($1, 2, 'RECEIVED_BY_PARTNER', 'acme', 'LATE-1', \
         now(), now())",
    )
    .bind(order.id)
    .execute(&mut *report)
    .await
    .unwrap();
    report.execute("COMMIT").await.unwrap();

    let read = reading.await.unwrap().unwrap().unwrap();
    let has_event = read
        .history
        .iter()
        .any(|e| e.status == OrderStatus::ReceivedByPartner);
    assert!(
        !has_event && read.tracking_id.as_deref().unwrap_or("").is_empty(),
        "a read that began before the report must not see half of it: {read:?}"
    );
    let after = f.store.get_order(order.id).await.unwrap().unwrap();
    assert_eq!(after.tracking_id.as_deref(), Some("LATE-1"));
    assert_eq!(after.history.len(), 2);
}
