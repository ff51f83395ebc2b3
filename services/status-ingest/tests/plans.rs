//! The report batch's statements are planned by key on a fresh database, where the statistics
//! say every table is empty: on the writer's own connection (the kit's `keyed_connection`, as
//! the group commit's writer opens it) no statement scans, hashes or walks a whole table. A
//! generic plan made there without those settings does — the report batch's would read all of
//! `orders` and `report_token_ids` for every batch from then on — and the last test shows that
//! this check sees it.
#![allow(clippy::unwrap_used)]

use waybill_service_kit::db::{Backend, keyed_connection};
use waybill_test_kit::{
    TestBackend, TestDatabase,
    plans::{assert_planned_by_key, generic_plan, not_by_key, plain_connection},
};

const RECORD_MANY: &str = include_str!("../src/store/sql/record_many.pg.sql");

/// Every statement the writer runs on its connection.
const WRITER_STATEMENTS: [(&str, &str); 4] = [
    ("record_many", RECORD_MANY),
    (
        "snapshot_batch",
        include_str!("../src/store/sql/snapshot_batch.pg.sql"),
    ),
    ("snapshot", include_str!("../src/store/sql/snapshot.pg.sql")),
    ("append", include_str!("../src/store/sql/append.pg.sql")),
];

#[tokio::test]
async fn the_writer_plans_every_statement_by_key_on_a_fresh_database() {
    let test_db = TestDatabase::create(TestBackend::Postgres).await;
    let db = test_db.connect().await;
    let Backend::Postgres(pool) = db.backend() else {
        panic!("a Postgres test database");
    };
    let mut conn = keyed_connection(pool).await.unwrap();
    assert_planned_by_key(&mut conn, &WRITER_STATEMENTS, "").await;
}

#[tokio::test]
async fn without_the_settings_the_batch_plan_reads_whole_tables() {
    let test_db = TestDatabase::create(TestBackend::Postgres).await;
    let _migrated = test_db.connect().await;
    let mut conn = plain_connection(&test_db.url).await;
    let plan = generic_plan(&mut conn, RECORD_MANY, "").await;
    let whole = not_by_key(&plan).join("\n");
    for table in ["orders", "report_token_ids"] {
        assert!(
            whole.contains(&format!("Seq Scan on {table}")),
            "{table} scanned whole, as measured in a run; the plan:\n{}",
            plan.join("\n")
        );
    }
}
