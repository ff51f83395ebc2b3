//! The relay's lease transaction plans its statements by key on a fresh database, where the
//! statistics say every table is empty: with what the lease's `BEGIN` sets (`lease_planning`:
//! its due indexes walked in order, and the kit's `KEYED_PLANS`), the lease walks its due
//! index, and the record finds each row by its key. A generic plan of the record made there without them
//! reads all of `dispatch` for every batch from then on; the last test shows this check sees it.
#![allow(clippy::unwrap_used)]

use waybill_dispatcher::store::lease_planning;
use waybill_test_kit::{
    TestBackend, TestDatabase,
    plans::{assert_planned_by_key, generic_plan, not_by_key, plain_connection},
};

const RECORD_UPDATES: &str = include_str!("../src/store/sql/record_updates.pg.sql");

/// Every statement file the lease's transaction runs.
const LEASE_STATEMENTS: [(&str, &str); 5] = [
    (
        "lease_due",
        include_str!("../src/store/sql/lease_due.pg.sql"),
    ),
    (
        "lease_overdue",
        include_str!("../src/store/sql/lease_overdue.pg.sql"),
    ),
    ("record_updates", RECORD_UPDATES),
    (
        "record_first_sends",
        include_str!("../src/store/sql/record_first_sends.pg.sql"),
    ),
    (
        "record_attempts",
        include_str!("../src/store/sql/record_attempts.pg.sql"),
    ),
];

#[tokio::test]
async fn the_lease_transaction_plans_every_statement_by_key_on_a_fresh_database() {
    let test_db = TestDatabase::create(TestBackend::Postgres).await;
    let _migrated = test_db.connect().await;
    let mut conn = plain_connection(&test_db.url).await;
    let settings = format!("{};", lease_planning());
    assert_planned_by_key(&mut conn, &LEASE_STATEMENTS, &settings).await;
}

#[tokio::test]
async fn without_the_settings_the_record_reads_the_whole_outbox() {
    let test_db = TestDatabase::create(TestBackend::Postgres).await;
    let _migrated = test_db.connect().await;
    let mut conn = plain_connection(&test_db.url).await;
    let plan = generic_plan(&mut conn, RECORD_UPDATES, "").await;
    assert!(
        not_by_key(&plan)
            .join("\n")
            .contains("Seq Scan on dispatch"),
        "the plan:\n{}",
        plan.join("\n")
    );
}
