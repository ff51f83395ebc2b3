//! SQLite lets one writer at a time into a file. A writer that finds the write lock taken sleeps
//! in SQLite's busy handler — 1, 2, 5, 10, … ms — and tries again: a timer where a wake-up would
//! do, and under load the better part of each hop's latency (`bench e2e` at 300 orders/s on the
//! embedded defaults slept more than once per order). Writers in this process therefore queue
//! on an in-process gate per file first and are woken, in turn, the moment the writer before
//! them is done; SQLite's own lock then only ever sees writers of other processes, whom the busy
//! handler still serves.
//!
//! Take the gate around a write transaction (or a single writing statement) on SQLite and hold
//! it to the commit; never take it twice in one task (it is not reentrant), and never await
//! anything but the database while holding it.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, LazyLock, Mutex, Weak},
};

use sqlx::SqlitePool;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// One gate per database file in this process.
static GATES: LazyLock<Mutex<HashMap<PathBuf, Weak<AsyncMutex<()>>>>> =
    LazyLock::new(Mutex::default);

/// Holding it, this task is the only writer of its SQLite file in the process.
pub type WriteTurn = OwnedMutexGuard<()>;

/// Waits for this process's turn to write to `pool`'s file (woken when the writer before is
/// done) and returns it; the turn ends when it is dropped.
pub async fn sqlite_write_turn(pool: &SqlitePool) -> WriteTurn {
    gate(pool.connect_options().get_filename())
        .lock_owned()
        .await
}

fn gate(file: &Path) -> Arc<AsyncMutex<()>> {
    let mut gates = GATES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(gate) = gates.get(file).and_then(Weak::upgrade) {
        return gate;
    }
    // Files no pool uses any more leave the map when a new one comes in.
    gates.retain(|_, gate| gate.strong_count() > 0);
    let gate = Arc::new(AsyncMutex::new(()));
    gates.insert(file.to_path_buf(), Arc::downgrade(&gate));
    gate
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    use super::*;

    async fn pool(file: &Path) -> SqlitePool {
        SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(file)
                    .create_if_missing(true),
            )
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn writers_of_one_file_take_turns_and_other_files_do_not_wait() {
        let dir = std::env::temp_dir().join(format!("waybill-gate-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let (one, same, other) = (
            pool(&dir.join("a.db")).await,
            pool(&dir.join("a.db")).await,
            pool(&dir.join("b.db")).await,
        );
        let first = sqlite_write_turn(&one).await;
        // A second pool on the same file waits for the turn; it is woken when the turn ends.
        let waiting = tokio::spawn(async move {
            let _turn = sqlite_write_turn(&same).await;
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "the same file's writer waits its turn"
        );
        // Another file's writer does not.
        let _elsewhere = tokio::time::timeout(Duration::from_secs(5), sqlite_write_turn(&other))
            .await
            .expect("another file is not gated by this one");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken when the turn ended")
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
