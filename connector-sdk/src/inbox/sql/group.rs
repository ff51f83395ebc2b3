//! Group commit: every inbox write goes through one writer task per inbox.
//!
//! The writer takes whatever writes are queued when it is free (no timer: an idle inbox
//! commits each write at once, a busy one commits many together), applies them in one
//! transaction, commits once, and only then answers them: nobody hears "stored" before the
//! commit is durable. A failed commit answers every write of the batch with the error (the SDK
//! retries them; each is idempotent).
//!
//! A write that fails on its own (its statement refused) rolls its batch back: it hears its
//! error, its batch-mates a retryable one, and the writer then runs the next
//! [`CAREFUL_BATCHES`] batches with a savepoint around each write, so that a write that keeps
//! failing is rolled back alone while the SDK retries it. Writes fail on their own rarely, if
//! ever; a savepoint around every write would cost a round trip each (a thread hand-off on
//! SQLite) every time. The writer also keeps its connection from one batch to the next.
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
use sqlx::{Connection as _, Database, Executor, pool::PoolConnection};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::inbox::error::InboxError;

/// Writes queued before callers wait for room (back-pressure, not growth).
const QUEUE: usize = 1024;
/// The most writes one transaction takes.
const MAX_BATCH: usize = 256;
/// After a write fails on its own, this many batches run with a savepoint around each write
/// before the writer trusts its writes again: a write that keeps failing (retried by the SDK)
/// then costs its batch-mates nothing.
const CAREFUL_BATCHES: u32 = 16;

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
    let mut writer = State::default();
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        if writer.commit_batch(&pool, &mut batch).await {
            commits.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the writer keeps from one batch to the next.
struct State<DB: Database> {
    /// The connection of the last batch that committed: a batch costs no pool round trips
    /// (on SQLite each is a hand-off to the connection's thread, the release a ping). Dropped
    /// after a batch that failed; the next batch takes another from the pool.
    conn: Option<PoolConnection<DB>>,
    /// Batches left to run with a savepoint around each write, after a write failed on its
    /// own (see [`CAREFUL_BATCHES`]).
    careful: u32,
}

impl<DB: Database> Default for State<DB> {
    fn default() -> Self {
        Self {
            conn: None,
            careful: 0,
        }
    }
}

impl<DB: Database> State<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// Applies and commits `batch` (emptying it), answering every write; `true` when committed
    /// (a write alone that failed rolls its transaction back: `false`).
    async fn commit_batch(&mut self, pool: &sqlx::Pool<DB>, batch: &mut Vec<Write<DB>>) -> bool {
        let mut pending = std::mem::take(batch).into_iter();
        let mut applied = Vec::new();
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => match pool.acquire().await {
                Ok(conn) => conn,
                Err(error) => {
                    fail_all(InboxError::from(error), applied, pending);
                    return false;
                }
            },
        };
        let careful = pending.len() > 1 && self.careful > 0;
        let outcome = apply_and_commit(&mut conn, &mut pending, &mut applied, careful).await;
        let error = match outcome {
            Ok(Applied::Committed { write_failed }) => {
                self.conn = Some(conn);
                self.careful = match (write_failed, careful) {
                    (true, _) => CAREFUL_BATCHES,
                    (false, true) => self.careful - 1,
                    (false, false) => self.careful,
                };
                for reply in applied {
                    let _ = reply.send(Ok(()));
                }
                return true;
            }
            Ok(Applied::RolledBack) => {
                // A write alone failed on its own (and heard its error).
                self.conn = Some(conn);
                return false;
            }
            Ok(Applied::MateFailed) => {
                self.conn = Some(conn);
                self.careful = CAREFUL_BATCHES;
                InboxError::Unavailable(
                    "rolled back with another write of its batch that failed; try again".to_owned(),
                )
            }
            Err(error) => error,
        };
        fail_all(error, applied, pending);
        false
    }
}

/// Answers every write of a batch that was not stored with `error` (the write that met it, if
/// any, heard its own already).
fn fail_all<DB: Database>(
    error: InboxError,
    applied: Vec<oneshot::Sender<Result<(), InboxError>>>,
    pending: std::vec::IntoIter<Write<DB>>,
) {
    warn!(%error, writes = applied.len() + pending.len(), "inbox batch not committed");
    for reply in applied {
        let _ = reply.send(Err(error.clone()));
    }
    for write in pending {
        let _ = write.reply.send(Err(error.clone()));
    }
}

/// What became of a batch whose transaction did not fail as a whole.
enum Applied {
    /// Committed; `write_failed` when a write failed on its own and was rolled back alone
    /// (under its savepoint).
    Committed { write_failed: bool },
    /// A write alone failed on its own: its transaction rolled back.
    RolledBack,
    /// A write failed on its own in a batch without savepoints: the whole batch rolled back.
    MateFailed,
}

/// Applies `pending` in one transaction on `conn` and commits it. Without savepoints (`careful`
/// false) a write that fails rolls the whole batch back (its batch-mates are answered with a
/// retryable error, and the writer is careful for a while); with them, it is rolled back alone.
async fn apply_and_commit<DB: Database>(
    conn: &mut PoolConnection<DB>,
    pending: &mut std::vec::IntoIter<Write<DB>>,
    applied: &mut Vec<oneshot::Sender<Result<(), InboxError>>>,
    careful: bool,
) -> Result<Applied, InboxError>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let mut tx = conn.begin().await?;
    if !careful {
        // One write alone (an idle inbox, the common case below saturation), or a batch whose
        // writes are trusted to succeed: no savepoints, a round trip fewer per write (each a
        // thread hand-off on SQLite).
        for write in pending.by_ref() {
            if let Err(error) = (write.apply)(&mut *tx).await {
                let _ = write.reply.send(Err(error));
                tx.rollback().await?;
                return Ok(if applied.is_empty() && pending.len() == 0 {
                    Applied::RolledBack
                } else {
                    Applied::MateFailed
                });
            }
            applied.push(write.reply);
        }
        tx.commit().await?;
        return Ok(Applied::Committed {
            write_failed: false,
        });
    }
    // Between two writes one round trip releases the last savepoint and opens the next.
    let mut open = "SAVEPOINT waybill_write";
    let mut write_failed = false;
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
                write_failed = true;
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
    Ok(Applied::Committed { write_failed })
}

#[cfg(test)]
mod tests;
