//! The group commit's writer on SQLite: batches, failures, and when it is careful.
#![allow(clippy::unwrap_used)]

use futures::future::join_all;
use sqlx::{
    SqlitePool,
    sqlite::{SqliteConnectOptions, SqlitePoolOptions},
};

use super::*;

async fn pool() -> SqlitePool {
    let dir = std::env::temp_dir().join(format!("waybill-group-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let options = SqliteConnectOptions::new()
        .filename(dir.join("group.db"))
        .create_if_missing(true)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    for statement in [
        "CREATE TABLE parent (id INTEGER PRIMARY KEY)",
        "CREATE TABLE item (id INTEGER PRIMARY KEY,
            parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    pool
}

fn insert(
    writer: &Writer<sqlx::Sqlite>,
    id: i64,
    parent: Option<i64>,
) -> impl Future<Output = Result<i64, InboxError>> + use<> {
    let writer = writer.clone();
    async move {
        writer
            .write(move |conn| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO item (id, parent) VALUES ($1, $2)")
                        .bind(id)
                        .bind(parent)
                        .execute(&mut *conn)
                        .await?;
                    if id == 13 {
                        return Err(InboxError::Refused("thirteen is refused".to_owned()));
                    }
                    Ok(id)
                })
            })
            .await
    }
}

async fn ids(pool: &SqlitePool) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM item ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn retryable(result: &Result<i64, InboxError>) -> bool {
    result.as_ref().is_err_and(InboxError::is_retryable)
}

fn thirteen(result: &Result<i64, InboxError>) -> bool {
    result.as_ref().unwrap_err() == &InboxError::Refused("thirteen is refused".to_owned())
}

// One thread: every write of a `join_all` below is queued before the writer task runs, so
// they share one batch deterministically.
#[tokio::test(flavor = "current_thread")]
async fn a_failing_write_rolls_its_batch_back_then_is_rolled_back_alone() {
    let pool = pool().await;
    let writer = Writer::start(pool.clone());
    let results = join_all((1..=20).map(|id| insert(&writer, id, None))).await;
    assert!(thirteen(&results[12]), "the write's own error");
    for (id, result) in (1..=20).zip(&results) {
        assert!(id == 13 || retryable(result), "{id}: {result:?}");
    }
    assert!(ids(&pool).await.is_empty(), "the batch rolled back");
    assert_eq!(writer.commits(), 0);

    // The SDK tries them again: now each write has its savepoint, and 13 fails alone.
    let results = join_all((1..=20).map(|id| insert(&writer, id, None))).await;
    assert!(thirteen(&results[12]));
    for (id, result) in (1..=20).zip(&results) {
        assert!(id == 13 || *result.as_ref().unwrap() == id);
    }
    let expected: Vec<i64> = (1..=20).filter(|id| *id != 13).collect();
    assert_eq!(ids(&pool).await, expected, "13's insert rolled back alone");
    assert_eq!(writer.commits(), 1, "nineteen writes, one commit");
}

// The savepoints last CAREFUL_BATCHES batches in which no write failed; a failure among
// them starts the count again; after them, batches go without.
#[tokio::test(flavor = "current_thread")]
async fn the_writer_is_careful_for_a_while_after_a_failure() {
    let pool = pool().await;
    let writer = Writer::start(pool.clone());
    let failed = join_all([1, 13].map(|id| insert(&writer, id, None))).await;
    assert!(retryable(&failed[0]) && thirteen(&failed[1]));
    let mut next = 100;
    for batch in 0..CAREFUL_BATCHES {
        // Halfway, a failing write again: rolled back alone, and the count starts again.
        let with_13 = batch == CAREFUL_BATCHES / 2;
        let ids = if with_13 {
            [next, 13]
        } else {
            [next, next + 1]
        };
        let results = join_all(ids.map(|id| insert(&writer, id, None))).await;
        assert!(results[0].is_ok(), "batch {batch}: {results:?}");
        assert_eq!(with_13, results[1].is_err());
        next += 2;
    }
    // CAREFUL_BATCHES / 2 + 1 batches passed since the last failure: still careful.
    let results = join_all([next, 13].map(|id| insert(&writer, id, None))).await;
    assert!(results[0].is_ok() && thirteen(&results[1]));
    for _ in 0..CAREFUL_BATCHES {
        next += 2;
        let results = join_all([next, next + 1].map(|id| insert(&writer, id, None))).await;
        assert!(results.iter().all(Result::is_ok));
    }
    // Trusted again: a failing write takes its batch-mate down with it.
    let results = join_all([next + 2, 13].map(|id| insert(&writer, id, None))).await;
    assert!(retryable(&results[0]) && thirteen(&results[1]));
}

// A write alone takes the path without a savepoint: its failure rolls back its own
// transaction and answers its own error; the next write alone commits.
#[tokio::test(flavor = "current_thread")]
async fn a_write_alone_commits_or_is_rolled_back_with_its_own_error() {
    let pool = pool().await;
    let writer = Writer::start(pool.clone());
    let refused = insert(&writer, 13, None).await;
    assert!(thirteen(&refused));
    assert!(ids(&pool).await.is_empty(), "13's insert rolled back");
    assert_eq!(writer.commits(), 0);
    assert_eq!(insert(&writer, 1, None).await.unwrap(), 1);
    assert_eq!(ids(&pool).await, vec![1]);
    assert_eq!(writer.commits(), 1);
    // A write alone failing does not make the writer careful: the next batch goes without
    // savepoints.
    let results = join_all([2, 13].map(|id| insert(&writer, id, None))).await;
    assert!(retryable(&results[0]) && thirteen(&results[1]));
    assert_eq!(ids(&pool).await, vec![1]);
}

#[tokio::test(flavor = "current_thread")]
async fn nobody_hears_stored_when_the_commit_fails() {
    let pool = pool().await;
    let writer = Writer::start(pool.clone());
    // Write 2 is valid until COMMIT checks the deferred foreign key; write 1 is valid.
    let results = join_all([insert(&writer, 1, None), insert(&writer, 2, Some(99))]).await;
    for result in &results {
        let error = result.as_ref().unwrap_err();
        assert!(
            matches!(error, InboxError::Refused(message) if message.contains("FOREIGN KEY")),
            "a refused statement, not worth a retry: {error:?}"
        );
    }
    assert!(ids(&pool).await.is_empty(), "nothing of the batch stored");
    // The writer goes on: the next batch commits.
    assert_eq!(insert(&writer, 3, None).await.unwrap(), 3);
    assert_eq!(ids(&pool).await, [3]);
}
