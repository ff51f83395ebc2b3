//! Group commit: every inbox write goes through one writer task per inbox.
//!
//! The writer takes whatever writes are queued when it is free (no timer: an idle inbox
//! commits each write at once, a busy one commits many together), applies them in one
//! transaction with a savepoint around each (a write that fails is rolled back alone and
//! answered with its error), commits once, and only then answers the others: nobody hears
//! "stored" before the commit is durable. A failed commit answers every write of the batch
//! with the error (the SDK retries them; each is idempotent).
//!
//! Why: an order costs the inbox three writes (delivery, answer, report confirmed), each a
//! commit and so a disk flush on SQLite's `synchronous=FULL`; one flush per batch instead of
//! one per write is what lets a connector keep up with thousands of orders per second. On
//! SQLite it also makes the writer the file's only writer, so writes never wait on each
//! other's locks.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use futures::future::BoxFuture;
use sqlx::{Connection as _, Database, Executor};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::inbox::error::InboxError;

/// Writes queued before callers wait for room (back-pressure, not growth).
const QUEUE: usize = 1024;
/// The most writes one transaction takes.
const MAX_BATCH: usize = 256;

type Apply<DB> = Box<
    dyn for<'c> FnOnce(
            &'c mut <DB as Database>::Connection,
        ) -> BoxFuture<'c, Result<(), InboxError>>
        + Send,
>;

/// One queued write: what to run in the transaction, and who waits for its commit.
struct Write<DB: Database> {
    apply: Apply<DB>,
    reply: oneshot::Sender<Result<(), InboxError>>,
}

/// The handle writes are queued through; the writer task stops when every handle is gone.
pub(super) struct Writer<DB: Database> {
    queue: mpsc::Sender<Write<DB>>,
    commits: Arc<AtomicU64>,
}

impl<DB: Database> Clone for Writer<DB> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            commits: Arc::clone(&self.commits),
        }
    }
}

impl<DB: Database> std::fmt::Debug for Writer<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("queued", &(QUEUE - self.queue.capacity()))
            .finish()
    }
}

impl<DB: Database> Writer<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// Starts the writer task on `pool`.
    pub fn start(pool: sqlx::Pool<DB>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let commits = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(pool, receiver, Arc::clone(&commits)));
        Self { queue, commits }
    }

    /// Transactions committed so far.
    #[cfg(test)]
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `op` in the next batch's transaction and returns its value once that transaction
    /// committed (or the error: `op`'s own, or the commit's).
    pub async fn write<T, F>(&self, op: F) -> Result<T, InboxError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut DB::Connection) -> BoxFuture<'c, Result<T, InboxError>>
            + Send
            + 'static,
    {
        let value = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&value);
        let apply: Apply<DB> = Box::new(move |conn| {
            Box::pin(async move {
                let result = op(conn).await?;
                *slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(result);
                Ok(())
            })
        });
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Write { apply, reply })
            .await
            .map_err(|_| InboxError::Closed("its writer has stopped"))?;
        answer
            .await
            .map_err(|_| InboxError::Closed("its writer stopped before committing"))??;
        let result = value
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        result.ok_or(InboxError::Closed("its writer left no result"))
    }
}

async fn run<DB: Database>(
    pool: sqlx::Pool<DB>,
    mut queue: mpsc::Receiver<Write<DB>>,
    commits: Arc<AtomicU64>,
) where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        if commit_batch(&pool, &mut batch).await {
            commits.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Applies and commits `batch` (emptying it), answering every write; `true` when committed
/// (a write alone that failed rolls its transaction back: `false`).
async fn commit_batch<DB: Database>(pool: &sqlx::Pool<DB>, batch: &mut Vec<Write<DB>>) -> bool
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let mut pending = std::mem::take(batch).into_iter();
    let mut applied = Vec::new();
    let outcome = apply_and_commit(pool, &mut pending, &mut applied).await;
    let error = match outcome {
        Ok(committed) => {
            for reply in applied {
                let _ = reply.send(Ok(()));
            }
            return committed;
        }
        Err(error) => error,
    };
    warn!(%error, writes = applied.len() + pending.len(), "inbox batch not committed");
    // Nothing of the batch is stored: the writes applied before the failure and those never
    // reached hear the same error (the write that met it heard it already).
    for reply in applied {
        let _ = reply.send(Err(error.clone()));
    }
    for write in pending {
        let _ = write.reply.send(Err(error.clone()));
    }
    false
}

async fn apply_and_commit<DB: Database>(
    pool: &sqlx::Pool<DB>,
    pending: &mut std::vec::IntoIter<Write<DB>>,
    applied: &mut Vec<oneshot::Sender<Result<(), InboxError>>>,
) -> Result<bool, InboxError>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    if pending.len() == 1 {
        // A write alone (an idle inbox, the common case below saturation) needs no savepoint:
        // its transaction is its own, and a failed write rolls it back whole. Two round trips
        // to the database fewer, each a thread hand-off on SQLite.
        let Some(write) = pending.next() else {
            return Ok(false);
        };
        return match (write.apply)(&mut *tx).await {
            Ok(()) => {
                applied.push(write.reply);
                tx.commit().await?;
                Ok(true)
            }
            Err(error) => {
                // The write's own error: nothing else was in the transaction.
                let _ = write.reply.send(Err(error));
                tx.rollback().await?;
                Ok(false)
            }
        };
    }
    // Between two writes one round trip releases the last savepoint and opens the next.
    let mut open = "SAVEPOINT waybill_write";
    for write in pending.by_ref() {
        let step = async {
            (&mut *tx).execute(open).await?;
            match (write.apply)(&mut *tx).await {
                Ok(()) => Ok(None),
                Err(error) => {
                    (&mut *tx)
                        .execute("ROLLBACK TO SAVEPOINT waybill_write")
                        .await?;
                    Ok::<_, InboxError>(Some(error))
                }
            }
        }
        .await;
        open = "RELEASE SAVEPOINT waybill_write; SAVEPOINT waybill_write";
        match step {
            Ok(None) => applied.push(write.reply),
            // The write's own error, rolled back alone: the batch goes on.
            Ok(Some(error)) => {
                let _ = write.reply.send(Err(error));
            }
            // The transaction itself failed: this write and the whole batch fail.
            Err(error) => {
                let _ = write.reply.send(Err(error.clone()));
                return Err(error);
            }
        }
    }
    (&mut *tx)
        .execute("RELEASE SAVEPOINT waybill_write")
        .await?;
    tx.commit().await?;
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
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

    // One thread: every write below is queued before the writer task runs, so they share one
    // batch deterministically.
    #[tokio::test(flavor = "current_thread")]
    async fn a_failing_write_is_rolled_back_alone_and_the_batch_commits_once() {
        let pool = pool().await;
        let writer = Writer::start(pool.clone());
        let results = join_all((1..=20).map(|id| insert(&writer, id, None))).await;
        for (id, result) in (1..=20).zip(&results) {
            match id {
                13 => assert_eq!(
                    result.as_ref().unwrap_err(),
                    &InboxError::Refused("thirteen is refused".to_owned()),
                    "the write's own error"
                ),
                _ => assert_eq!(*result.as_ref().unwrap(), id),
            }
        }
        let expected: Vec<i64> = (1..=20).filter(|id| *id != 13).collect();
        assert_eq!(ids(&pool).await, expected, "13's insert rolled back alone");
        assert_eq!(writer.commits(), 1, "twenty writes, one commit");
    }

    // A write alone takes the path without a savepoint: its failure rolls back its own
    // transaction and answers its own error; the next write alone commits.
    #[tokio::test(flavor = "current_thread")]
    async fn a_write_alone_commits_or_is_rolled_back_with_its_own_error() {
        let pool = pool().await;
        let writer = Writer::start(pool.clone());
        let refused = insert(&writer, 13, None).await;
        assert_eq!(
            refused.unwrap_err(),
            InboxError::Refused("thirteen is refused".to_owned())
        );
        assert!(ids(&pool).await.is_empty(), "13's insert rolled back");
        assert_eq!(writer.commits(), 0);
        assert_eq!(insert(&writer, 1, None).await.unwrap(), 1);
        assert_eq!(ids(&pool).await, vec![1]);
        assert_eq!(writer.commits(), 1);
        // Batches after it still use the savepoints (two failing writes in a row included).
        let results = join_all([13, 2, 3].map(|id| insert(&writer, id, None))).await;
        assert!(results[0].is_err() && results[1].is_ok() && results[2].is_ok());
        let results = join_all([4, 13].map(|id| insert(&writer, id, None))).await;
        assert!(results[0].is_ok() && results[1].is_err());
        assert_eq!(ids(&pool).await, vec![1, 2, 3, 4]);
        assert_eq!(writer.commits(), 3);
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
}
