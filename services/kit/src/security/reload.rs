//! Re-reading a listener's files while it serves (TLS material, the credentials file): on every
//! SIGHUP, and whenever a file's modification time or length changes (checked every
//! [`FILE_CHECK_INTERVAL`], for orchestrators that rotate mounted files without a signal).
//!
//! One [`Reloader`] task per listener watches everything the listener re-reads. A version that
//! cannot be loaded is refused with a warning and the previous one stays in force.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How often a listener's files are checked for changes by default (a rotated certificate or
/// credentials file mounted by an orchestrator, with no signal sent).
pub const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// What identifies one version of a set of files: each file's modification time and length.
pub type FileStamps = Vec<Option<(SystemTime, u64)>>;

/// The stamps of `paths`, in order (`None` for a file that cannot be read).
pub fn file_stamps<'a>(paths: impl IntoIterator<Item = &'a Path>) -> FileStamps {
    paths
        .into_iter()
        .map(|path| {
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Something a listener loads from files and can re-read while it serves.
pub trait Reload: Send + Sync {
    /// The files' current stamps.
    fn stamps(&self) -> FileStamps;
    /// Re-reads the files and logs the outcome (`why` says what triggered it): INFO when the
    /// new version is in force, WARN when it was refused and the previous one stays.
    fn reload_and_log(&self, why: &'static str);
}

/// Watches everything one listener re-reads (see the module docs).
pub struct Reloader {
    watched: Vec<(Arc<dyn Reload>, FileStamps)>,
    check_interval: Duration,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("watched", &self.watched.len())
            .field("check_interval", &self.check_interval)
            .finish()
    }
}

impl Reloader {
    /// Watches `items` (their files' stamps are taken now), checking the files every
    /// `check_interval`.
    pub fn new(items: Vec<Arc<dyn Reload>>, check_interval: Duration) -> Self {
        Self {
            watched: items
                .into_iter()
                .map(|item| {
                    let stamps = item.stamps();
                    (item, stamps)
                })
                .collect(),
            check_interval,
        }
    }

    /// Whether there is nothing to watch.
    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    /// What a SIGHUP does: re-reads everything, changed or not.
    pub fn reload_all(&mut self, why: &'static str) {
        for (item, seen) in &mut self.watched {
            *seen = item.stamps();
            item.reload_and_log(why);
        }
    }

    /// Re-reads what changed since the last look; returns how many were re-read.
    pub fn reload_changed(&mut self) -> usize {
        let mut reloaded = 0;
        for (item, seen) in &mut self.watched {
            let now = item.stamps();
            if now != *seen {
                *seen = now;
                item.reload_and_log("files changed");
                reloaded += 1;
            }
        }
        reloaded
    }

    /// Starts watching until `shutdown`: the SIGHUP handler is in place when this returns (a
    /// signal sent once the listener serves is never missed, nor does it end the process).
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        #[cfg(unix)]
        let hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hangups) => Some(hangups),
            Err(error) => {
                warn!(%error, "cannot listen for SIGHUP; files are reloaded when they change");
                None
            }
        };
        #[cfg(not(unix))]
        let hangups = None::<()>;
        tokio::spawn(self.run(hangups, shutdown))
    }

    #[cfg(unix)]
    async fn run(
        mut self,
        mut hangups: Option<tokio::signal::unix::Signal>,
        shutdown: CancellationToken,
    ) {
        let mut checks = tokio::time::interval(self.check_interval);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        checks.tick().await;
        loop {
            let hangup = async {
                match hangups.as_mut() {
                    Some(hangups) => hangups.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                received = hangup => match received {
                    Some(()) => self.reload_all("sighup"),
                    // The signal driver is gone: keep watching the files.
                    None => hangups = None,
                },
                _ = checks.tick() => {
                    self.reload_changed();
                }
            }
        }
    }

    #[cfg(not(unix))]
    async fn run(mut self, _hangups: Option<()>, shutdown: CancellationToken) {
        let mut checks = tokio::time::interval(self.check_interval);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        checks.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = checks.tick() => {
                    self.reload_changed();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    /// Stamps set by the test, reloads counted.
    #[derive(Default)]
    struct Fake {
        stamp: Mutex<u64>,
        reloads: AtomicUsize,
    }

    impl Fake {
        fn touch(&self) {
            *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        }

        fn reloads(&self) -> usize {
            self.reloads.load(Ordering::SeqCst)
        }
    }

    impl Reload for Fake {
        fn stamps(&self) -> FileStamps {
            let stamp = *self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            vec![Some((SystemTime::UNIX_EPOCH, stamp))]
        }

        fn reload_and_log(&self, _why: &'static str) {
            self.reloads.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn one_reloader_rereads_what_changed_and_everything_on_a_signal() {
        let (tls, credentials) = (Arc::new(Fake::default()), Arc::new(Fake::default()));
        let mut reloader =
            Reloader::new(vec![tls.clone(), credentials.clone()], FILE_CHECK_INTERVAL);
        assert_eq!(reloader.reload_changed(), 0, "nothing changed");
        credentials.touch();
        assert_eq!(reloader.reload_changed(), 1);
        assert_eq!((tls.reloads(), credentials.reloads()), (0, 1));
        assert_eq!(reloader.reload_changed(), 0, "seen already");
        reloader.reload_all("sighup");
        assert_eq!((tls.reloads(), credentials.reloads()), (1, 2));
        tls.touch();
        reloader.reload_all("sighup");
        assert_eq!(
            reloader.reload_changed(),
            0,
            "a signal takes the stamps too"
        );
    }

    #[test]
    fn stamps_follow_a_file_and_its_absence() {
        let path = std::env::temp_dir().join(format!("waybill-stamps-{}", uuid::Uuid::new_v4()));
        assert_eq!(file_stamps([path.as_path()]), vec![None]);
        std::fs::write(&path, "one").expect("write");
        let first = file_stamps([path.as_path()]);
        std::fs::write(&path, "longer").expect("write");
        assert_ne!(file_stamps([path.as_path()]), first, "the length changed");
        let _ = std::fs::remove_file(&path);
    }
}
