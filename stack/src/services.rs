//! The services' tasks: each runs until its own token (a child of the stack's) is cancelled,
//! and says when it ended and whether it was asked to, so that a service that stops by itself
//! is noticed ([`Services::failure`]) and one stopped on purpose (StatusIngest in the fault
//! tests) is not.

use std::{
    future::Future,
    sync::{Mutex, MutexGuard, PoisonError},
};

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::error::{ServiceError, StackError};

/// A service that ended.
struct Ended {
    service: &'static str,
    /// Its token was cancelled before it ended: it was stopped, it did not stop by itself.
    asked: bool,
    result: Result<(), ServiceError>,
}

/// A running service.
struct Running {
    service: &'static str,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Every running service of a stack.
pub(crate) struct Services {
    stop: CancellationToken,
    running: Mutex<Vec<Running>>,
    ended: mpsc::UnboundedSender<Ended>,
    ends: tokio::sync::Mutex<mpsc::UnboundedReceiver<Ended>>,
    /// Errors of services that were asked to stop, kept for [`Services::first_error`].
    errors: Mutex<Vec<StackError>>,
}

impl Services {
    pub(crate) fn new() -> Self {
        let (ended, ends) = mpsc::unbounded_channel();
        Self {
            stop: CancellationToken::new(),
            running: Mutex::new(Vec::new()),
            ended,
            ends: tokio::sync::Mutex::new(ends),
            errors: Mutex::new(Vec::new()),
        }
    }

    /// The token every service stops on (the database's background tasks too).
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.stop
    }

    /// Runs `serve(stop)` as `service` until `stop` is cancelled.
    pub(crate) fn spawn<F, E>(
        &self,
        service: &'static str,
        serve: impl FnOnce(CancellationToken) -> F,
    ) where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let stop = self.stop.child_token();
        let serving = serve(stop.clone());
        let ended = self.ended.clone();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let result = serving
                    .await
                    .map_err(|error| Box::new(error) as ServiceError);
                let _ = ended.send(Ended {
                    service,
                    asked: stop.is_cancelled(),
                    result,
                });
            }
        });
        lock(&self.running).push(Running {
            service,
            stop,
            task,
        });
    }

    /// Stops `service` alone and waits until it has finished.
    pub(crate) async fn stop_one(&self, service: &'static str) {
        let stopping: Vec<Running> = {
            let mut running = lock(&self.running);
            let (stopping, rest) = running.drain(..).partition(|r| r.service == service);
            *running = rest;
            stopping
        };
        for running in stopping {
            running.stop.cancel();
            if running.task.await.is_err() {
                lock(&self.errors).push(StackError::Panicked { service });
            }
        }
    }

    /// Cancels every service and takes their tasks, to wait for.
    pub(crate) fn cancel_all(&self) -> Vec<(&'static str, JoinHandle<()>)> {
        self.stop.cancel();
        lock(&self.running)
            .drain(..)
            .map(|running| (running.service, running.task))
            .collect()
    }

    /// Waits until a service stops without being asked to, and says which and why. Never
    /// returns while every service runs (or has been stopped on purpose).
    pub(crate) async fn failure(&self) -> StackError {
        let mut ends = self.ends.lock().await;
        loop {
            let Some(ended) = ends.recv().await else {
                // The sender lives as long as `self`: unreachable, but never a false alarm.
                return std::future::pending().await;
            };
            match (ended.asked, ended.result) {
                (false, Ok(())) => {
                    return StackError::Stopped {
                        service: ended.service,
                    };
                }
                (false, Err(source)) => {
                    return StackError::Failed {
                        service: ended.service,
                        source,
                    };
                }
                (true, Err(source)) => lock(&self.errors).push(StackError::Failed {
                    service: ended.service,
                    source,
                }),
                (true, Ok(())) => {}
            }
        }
    }

    /// After every task has finished: the first error any service ended with (or panicked
    /// with, `panicked`), not already returned by [`Services::failure`].
    pub(crate) fn first_error(&self, panicked: Vec<StackError>) -> Option<StackError> {
        let mut errors = std::mem::take(&mut *lock(&self.errors));
        if let Ok(mut ends) = self.ends.try_lock() {
            while let Ok(ended) = ends.try_recv() {
                match ended.result {
                    Err(source) => errors.push(StackError::Failed {
                        service: ended.service,
                        source,
                    }),
                    Ok(()) if !ended.asked => errors.push(StackError::Stopped {
                        service: ended.service,
                    }),
                    Ok(()) => {}
                }
            }
        }
        errors.extend(panicked);
        errors.into_iter().next()
    }
}

/// The guarded value, even if a panicking thread poisoned the lock.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Services;
    use crate::error::StackError;

    #[derive(Debug, thiserror::Error)]
    #[error("the port is gone")]
    struct Lost;

    /// Runs until stopped.
    async fn serving(stop: tokio_util::sync::CancellationToken) -> Result<(), Lost> {
        stop.cancelled().await;
        Ok(())
    }

    #[tokio::test]
    async fn a_service_that_fails_on_its_own_is_the_failure() {
        let services = Services::new();
        services.spawn("orders", serving);
        services.spawn("dispatcher", |_| async { Err::<(), _>(Lost) });
        let failure = services.failure().await;
        assert!(
            matches!(
                &failure,
                StackError::Failed {
                    service: "dispatcher",
                    ..
                }
            ),
            "{failure:?}"
        );
        assert_eq!(failure.chain(), "dispatcher failed: the port is gone");
        for (_, task) in services.cancel_all() {
            task.await.expect("task");
        }
        // Returned once by `failure`, not again.
        assert!(services.first_error(Vec::new()).is_none());
    }

    #[tokio::test]
    async fn a_service_that_returns_unasked_is_a_failure_too() {
        let services = Services::new();
        services.spawn("status ingest", |_| async { Ok::<(), Lost>(()) });
        assert!(matches!(
            services.failure().await,
            StackError::Stopped {
                service: "status ingest"
            }
        ));
    }

    #[tokio::test]
    async fn a_service_stopped_on_purpose_is_no_failure_and_can_run_again() {
        let services = Services::new();
        services.spawn("orders", serving);
        services.spawn("status ingest", serving);
        services.stop_one("status ingest").await;
        services.spawn("status ingest", serving);
        services.stop_one("status ingest").await;
        let failure = tokio::time::timeout(Duration::from_millis(50), services.failure()).await;
        assert!(failure.is_err(), "no failure: {failure:?}");
        let stopped: Vec<&str> = services
            .cancel_all()
            .iter()
            .map(|(name, _)| *name)
            .collect();
        assert_eq!(stopped, ["orders"]);
    }

    #[tokio::test]
    async fn an_error_while_stopping_is_the_stop_error() {
        let services = Services::new();
        services.spawn("dispatcher", |stop| async move {
            stop.cancelled().await;
            Err::<(), _>(Lost)
        });
        for (_, task) in services.cancel_all() {
            task.await.expect("task");
        }
        let error = services.first_error(Vec::new()).expect("the stop error");
        assert_eq!(error.chain(), "dispatcher failed: the port is gone");
    }
}
