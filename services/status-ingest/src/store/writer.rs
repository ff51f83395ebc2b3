//! The group commit: callers queue their reports and wait; one writer takes whatever is queued
//! when it is free and records it as one batch ([`super::SqlIngestStore::record_batch`]).
//!
//! - **No timer.** The writer waits for the first report, then takes every report queued behind
//!   it (up to [`MAX_BATCH`]) without waiting for more: a lone report is written at once, and
//!   under load the batch is whatever arrived while the last one was being written.
//! - **One writer.** Measured with two (the second applying its batch while the first waited
//!   for its commit, or both freely): smaller batches, more Postgres CPU per report, lower
//!   throughput every time (`docs/benchmarks.md`).
//! - **Bounded.** The queue holds [`QUEUE`] reports; a caller that finds it full waits for room
//!   (back-pressure onto the gRPC calls), so memory does not grow with the load.
//! - **Its own connection.** Batches run on one connection the writer holds outside the pool,
//!   planning every statement by key ([`Session`]): no pool round trips per batch.
//! - **Bounded in time.** A batch not recorded within [`WRITE_LIMIT`] is given up (dropped, and
//!   its connection with it: the next batch opens another) and
//!   every caller is answered unavailable (a report that committed after all comes back as a
//!   duplicate). A batch never waits for a row lock, so only a connection whose host went
//!   silent takes that long; without the bound it would hold up every report behind it.
//! - **Answered after the commit.** Each caller gets its report's result only once the batch's
//!   `COMMIT` returned (on Postgres, once the commit record is flushed); a report left out of the
//!   batch is answered at once, and its caller records it alone.
//! - A batch that fails as a whole answers every caller [`StoreError::Batch`], which the service
//!   answers `UNAVAILABLE` (retry with a fresh token).
//!
//! The writer starts with the first report (on the runtime that sent it) and stops when the
//! store is dropped (the queue closes).

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};
use waybill_service_kit::db::within;

use super::{
    batches::{Batches, MAX_BATCH, Session},
    error::StoreError,
    model::{AuthenticatedReport, InBatch},
};

/// Reports queued for the writer at most; a caller beyond waits for room.
pub const QUEUE: usize = 4 * MAX_BATCH;
/// How long a batch may take before it is given up (see the module docs).
pub const WRITE_LIMIT: Duration = Duration::from_secs(10);

/// One caller's report and where its answer goes.
struct Job {
    report: AuthenticatedReport,
    answer: oneshot::Sender<Result<InBatch, StoreError>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("order_id", &self.report.order_id)
            .finish_non_exhaustive()
    }
}

/// The queue to the writer, opened with the first report.
#[derive(Debug)]
pub(super) struct Writer {
    queue: OnceLock<mpsc::Sender<Job>>,
    limit: Duration,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new(WRITE_LIMIT)
    }
}

impl Writer {
    /// A writer whose batches are given up after `limit`.
    pub(super) fn new(limit: Duration) -> Self {
        Self {
            queue: OnceLock::new(),
            limit,
        }
    }

    /// Queues `report` (waiting for room if the queue is full) and waits for what its batch
    /// did with it.
    pub(super) async fn submit(
        &self,
        batches: &Batches,
        report: AuthenticatedReport,
    ) -> Result<InBatch, StoreError> {
        let queue = self.queue.get_or_init(|| start(batches, self.limit));
        let (answer, answered) = oneshot::channel();
        queue
            .send(Job { report, answer })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answered.await.map_err(|_| StoreError::WriterStopped)?
    }
}

/// Opens the queue and spawns the writer.
fn start(batches: &Batches, limit: Duration) -> mpsc::Sender<Job> {
    let (sender, receiver) = mpsc::channel(QUEUE);
    tokio::spawn(write(batches.clone(), limit, receiver));
    sender
}

/// The writer, until the queue closes: takes what is queued, records it, answers.
async fn write(batches: Batches, limit: Duration, mut queue: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    let mut session = Session::default();
    while queue.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let (reports, answers): (Vec<_>, Vec<_>) =
            jobs.drain(..).map(|job| (job.report, job.answer)).unzip();
        let recorded = within(
            limit,
            "the batch of reports",
            batches.record(&mut session, &reports),
        );
        match recorded.await {
            Ok(results) => {
                debug!(reports = reports.len(), "batch of reports committed");
                for (answer, result) in answers.into_iter().zip(results) {
                    // A caller that went away (its call cancelled) needs no answer.
                    let _ = answer.send(Ok(result));
                }
            }
            Err(error) => {
                warn!(reports = reports.len(), %error, "batch of reports not committed; every caller is answered unavailable");
                let error = Arc::new(error);
                for answer in answers {
                    let _ = answer.send(Err(StoreError::Batch(Arc::clone(&error))));
                }
            }
        }
    }
}
