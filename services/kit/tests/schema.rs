//! The schema at connect, on both backends: a service that requires it current refuses a
//! database behind it (changing nothing), migrating applies each pending migration once, a
//! binary older than the schema runs on it (a rolling upgrade, a rollback), and an edited
//! migration stops everything. On Postgres, services starting together migrate once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tokio_util::sync::CancellationToken;
use waybill_service_kit::db::{
    Backend, Database, DbError, PoolSettings, SchemaError, SchemaPolicy,
};
use waybill_test_kit::{TestBackend, TestDatabase, on_both_backends};

async fn connect(database: &TestDatabase, schema: SchemaPolicy) -> Result<Database, DbError> {
    let settings = PoolSettings {
        schema,
        ..PoolSettings::default()
    };
    Database::connect(&database.url, &settings, CancellationToken::new()).await
}

/// Every migration this binary has, by version.
async fn all_versions(database: &TestDatabase) -> Vec<i64> {
    let db = connect(database, SchemaPolicy::Leave).await.unwrap();
    let status = db.schema_status().await.unwrap();
    let mut versions: Vec<i64> = status
        .applied
        .iter()
        .chain(&status.pending)
        .map(|m| m.version)
        .collect();
    versions.sort_unstable();
    versions
}

async fn execute(db: &Database, sql: &str) {
    match db.backend() {
        Backend::Postgres(pool) => {
            sqlx::query(sql).execute(pool).await.unwrap();
        }
        Backend::Sqlite(pool) => {
            sqlx::query(sql).execute(pool).await.unwrap();
        }
    }
}

async fn applied_rows(db: &Database) -> i64 {
    match db.backend() {
        Backend::Postgres(pool) => sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(pool)
            .await
            .unwrap(),
        Backend::Sqlite(pool) => sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(pool)
            .await
            .unwrap(),
    }
}

async fn requiring_a_schema_refuses_a_database_behind_it_and_changes_nothing(backend: TestBackend) {
    let database = TestDatabase::create(backend).await;
    let versions = all_versions(&database).await;
    assert!(versions.len() >= 8, "{versions:?}");
    let Err(DbError::Schema(SchemaError::Behind(missing))) =
        connect(&database, SchemaPolicy::Require).await
    else {
        panic!("a fresh database must be refused")
    };
    let missing: Vec<i64> = missing.iter().map(|m| m.version).collect();
    assert_eq!(missing, versions);
    let message = connect(&database, SchemaPolicy::Require)
        .await
        .unwrap_err()
        .to_string();
    assert!(message.contains("waybill migrate"), "{message}");
    assert!(message.contains("1 (orders)"), "{message}");
    // Nothing was created: still every migration pending, no bookkeeping table.
    let db = connect(&database, SchemaPolicy::Leave).await.unwrap();
    let status = db.schema_status().await.unwrap();
    assert!(status.applied.is_empty());
    assert_eq!(status.pending.len(), versions.len());
    assert_eq!(db.schema_version(), 0);
}

async fn migrating_applies_each_pending_migration_once(backend: TestBackend) {
    let database = TestDatabase::create(backend).await;
    let versions = all_versions(&database).await;
    let mut db = connect(&database, SchemaPolicy::Leave).await.unwrap();
    let applied: Vec<i64> = db
        .migrate()
        .await
        .unwrap()
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(applied, versions);
    assert!(db.schema().is_current());
    assert_eq!(db.schema_version(), *versions.last().unwrap());
    assert!(
        db.migrate().await.unwrap().is_empty(),
        "nothing left to apply"
    );
    assert_eq!(
        applied_rows(&db).await,
        i64::try_from(versions.len()).unwrap()
    );
    // Now a service that requires the schema starts, and one that migrates applies nothing.
    let required = connect(&database, SchemaPolicy::Require).await.unwrap();
    assert_eq!(required.schema_version(), *versions.last().unwrap());
    let migrating = connect(&database, SchemaPolicy::Migrate).await.unwrap();
    assert_eq!(
        applied_rows(&migrating).await,
        i64::try_from(versions.len()).unwrap()
    );
}

async fn an_older_binary_runs_on_a_newer_schema(backend: TestBackend) {
    let database = TestDatabase::create(backend).await;
    let db = connect(&database, SchemaPolicy::Migrate).await.unwrap();
    // A newer binary applied migration 9999, which this one does not have.
    execute(
        &db,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from a newer binary', TRUE, x'00', 0)"
            .replace("x'00'", checksum_literal(backend))
            .as_str(),
    )
    .await;
    for policy in [SchemaPolicy::Migrate, SchemaPolicy::Require] {
        let db = connect(&database, policy).await.unwrap();
        assert_eq!(db.schema().newer, vec![9999], "{policy:?}");
        assert!(db.schema().pending.is_empty(), "{policy:?}");
        assert_eq!(db.schema_version(), 9999);
    }
}

async fn an_edited_migration_stops_start_up(backend: TestBackend) {
    let database = TestDatabase::create(backend).await;
    let db = connect(&database, SchemaPolicy::Migrate).await.unwrap();
    execute(
        &db,
        "UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 2"
            .replace("x'00'", checksum_literal(backend))
            .as_str(),
    )
    .await;
    for policy in [SchemaPolicy::Migrate, SchemaPolicy::Require] {
        let error = connect(&database, policy).await.unwrap_err();
        assert!(
            matches!(error, DbError::Schema(SchemaError::Modified(2))),
            "{policy:?}: {error}"
        );
        assert!(error.to_string().contains("migration 2"), "{error}");
    }
}

fn checksum_literal(backend: TestBackend) -> &'static str {
    match backend {
        TestBackend::Postgres => "'\\x00'::bytea",
        TestBackend::Sqlite => "x'00'",
    }
}

on_both_backends!(
    requiring_a_schema_refuses_a_database_behind_it_and_changes_nothing,
    migrating_applies_each_pending_migration_once,
    an_older_binary_runs_on_a_newer_schema,
    an_edited_migration_stops_start_up,
);

/// Four services starting at once on a fresh Postgres database: the migration lock makes them
/// take turns, every migration is applied exactly once, and all four start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_starting_together_migrate_once() {
    let database = TestDatabase::create(TestBackend::Postgres).await;
    let versions = all_versions(&database).await;
    let starts = (0..4).map(|_| connect(&database, SchemaPolicy::Migrate));
    let started = futures::future::join_all(starts).await;
    for db in &started {
        let db = db.as_ref().unwrap();
        assert!(db.schema().is_current());
    }
    let db = started.into_iter().next().unwrap().unwrap();
    assert_eq!(
        applied_rows(&db).await,
        i64::try_from(versions.len()).unwrap()
    );
}
