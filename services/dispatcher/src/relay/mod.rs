//! The relay: from the outbox to the partners' topics.
//!
//! The steps of one cycle ([`Relay::run_cycle`]), each a method of its own:
//!
//! 1. **lease** ([`Relay::lease_due`]): a batch of due rows, held by this instance (Postgres:
//!    row locks in a transaction left open until step 3; SQLite: owner and batch id written
//!    into the rows);
//! 2. **produce** ([`Relay::produce`], in `produce.rs`): plan each order (route, audit copy,
//!    re-send; partners and routes re-read per batch, so changes apply without a restart),
//!    produce every message of the batch at once, settle each order on its outcome — the
//!    decisions are pure functions in [`crate::domain::cycle`]; nothing is written;
//! 3. **record** ([`Relay::record`]): every outcome in one fenced transaction, which ends the
//!    lease.
//!
//! [`Relay::relay_batch`] is produce + record for one leased batch; the same three steps run
//! for `SENT` orders whose handover deadline passed ([`Relay::lease_overdue`]: wait for a
//! partner that is behind, re-send to one that is gone, or flag; `handover.rs` asks the broker
//! about the partners' consumer groups first). Beside them, **publish** (`publish.rs`) puts new history events on the order-events
//! topic and audit copies waiting in the audit outbox on the audit topic, and the retention
//! job (`cleanup.rs`) removes what operators no longer need. An observer (`observe.rs`, none by
//! default) is told when each order is leased and when its partner's copy is acknowledged.
//!
//! Sending goes through [`OrderProducer`], which replaces itself when it breaks; a message
//! whose topic the broker does not know gets its topic created and one more try.
//!
//! The loop wakes on the database's change feed (Postgres `NOTIFY` from other processes, an
//! in-process signal otherwise) and polls only as a fallback. It never keeps a "last seen id"
//! cursor: ids do not commit in id order, so each cycle asks the database what is due now.
//!
//! Every step is bounded by the lease's length: a leased batch's produce and bookkeeping by
//! what is left of its lease; leasing, publishing, retention rounds and the release of leases
//! at shutdown by one lease's length.
//! Past it a batch's rows may be another instance's anyway; a step given up there (its
//! transaction dropped, the loop told the database is unavailable) frees the loop, where a
//! statement to a database host that stopped answering would otherwise hold it until the
//! kernel gave up on the socket (many minutes). The server ends the dropped lease's
//! transaction itself once it sits idle for the lease's length.
//!
//! The steps are public so tests can stop an instance between produce and record.

use std::{
    future::Future,
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;
use waybill_service_kit::{
    clock::SharedClock,
    db::{ChangeFeed, within},
};

mod cleanup;
mod handover;
pub(crate) mod observe;
mod produce;
mod publish;
mod routing;
mod wake;

pub use observe::{Observer, RelayObserver, RelayStep};

pub use crate::domain::cycle::BatchKind;
use crate::{
    config::RelaySettings,
    domain::{cycle::RetryPolicy, model::LeasedOrder},
    error::DispatchError,
    kafka::{TopicCreator, producer::OrderProducer, progress::GroupProbe},
    metrics::RelayMetrics,
    store::{BatchRecord, Fence, Lease, LeaseRequest, RecordReport, RelayStore},
};

/// Rows under one lease.
#[derive(Debug)]
pub struct LeasedBatch {
    /// Which rows these are.
    pub kind: BatchKind,
    /// The rows, and what fences their bookkeeping.
    pub lease: Lease,
    /// When the lease ends (this process's monotonic time): produce and bookkeeping are given
    /// up then.
    pub ends: tokio::time::Instant,
}

impl LeasedBatch {
    /// The orders.
    pub fn orders(&self) -> &[LeasedOrder] {
        &self.lease.orders
    }

    /// The owner and batch id it was leased under.
    pub fn fence(&self) -> &Fence {
        &self.lease.fence
    }
}

/// What one cycle did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CycleReport {
    /// Due rows leased.
    pub due: usize,
    /// Overdue rows leased.
    pub overdue: usize,
    /// Events published.
    pub events: usize,
    /// Whether some step filled its batch (more work is probably waiting).
    pub full: bool,
}

/// What one round of publishing events did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Events put on the order-events topic.
    pub events: usize,
    /// Whether more are waiting (a full batch, or events held back for a moment).
    pub more: bool,
}

/// One dispatcher instance's relay.
#[derive(Debug, Clone)]
pub struct Relay {
    store: Arc<dyn RelayStore>,
    producer: OrderProducer,
    topics: Arc<dyn TopicCreator>,
    /// Asks the broker about partners' consumer groups at their handover deadlines.
    probe: GroupProbe,
    /// Whether the latest attempt to publish events failed (so an outage is logged once).
    events_failing: Arc<AtomicBool>,
    /// The routing table, kept while partners and routes are unchanged (`routing.rs`).
    routing: Arc<routing::RoutingCache>,
    clock: SharedClock,
    feed: ChangeFeed,
    settings: RelaySettings,
    metrics: Arc<RelayMetrics>,
}

impl Relay {
    /// A relay over `store`, producing with `producer` to topics `topics` creates when they
    /// are missing, woken by `feed` (the store announces its own commits: Postgres by
    /// `NOTIFY`, SQLite in-process).
    pub fn new(
        store: Arc<dyn RelayStore>,
        producer: OrderProducer,
        topics: Arc<dyn TopicCreator>,
        clock: SharedClock,
        feed: ChangeFeed,
        settings: RelaySettings,
        metrics: Arc<RelayMetrics>,
    ) -> Self {
        // Asked while an overdue batch is leased, before its sends: within half the room the
        // lease leaves beside a produce (over a second, as the settings are checked), at most
        // the probe's own cap.
        let probe_timeout = settings
            .lease
            .saturating_sub(producer.settings().produce_timeout)
            / 2;
        let probe = GroupProbe::new(producer.settings(), probe_timeout);
        Self {
            store,
            producer,
            topics,
            probe,
            events_failing: Arc::new(AtomicBool::new(false)),
            routing: Arc::default(),
            clock,
            feed,
            settings,
            metrics,
        }
    }

    /// This instance's metrics.
    pub fn metrics(&self) -> &Arc<RelayMetrics> {
        &self.metrics
    }

    /// This instance's settings.
    pub fn settings(&self) -> &RelaySettings {
        &self.settings
    }

    fn lease_request(&self) -> Result<LeaseRequest, DispatchError> {
        let now = self.clock.now();
        let lease = chrono::Duration::from_std(self.settings.lease)
            .map_err(|_| waybill_service_kit::text::InvalidField::new("--lease", "is too long"))?;
        Ok(LeaseRequest {
            owner: self.settings.instance_id.clone(),
            batch_id: Uuid::new_v4(),
            now,
            expires_at: now + lease,
            limit: self.settings.batch_size,
        })
    }

    /// `step`'s outcome, or — once one lease's length has passed — the database called
    /// unavailable (see the module's notes): `step` is dropped, and its transaction with it.
    pub(crate) async fn bounded<T>(
        &self,
        what: &str,
        step: impl Future<Output = Result<T, DispatchError>>,
    ) -> Result<T, DispatchError> {
        within(self.settings.lease, what, step).await
    }

    /// Leases a batch of due rows.
    pub async fn lease_due(&self) -> Result<LeasedBatch, DispatchError> {
        self.lease(BatchKind::Due).await
    }

    /// Leases a batch of `SENT` rows whose handover deadline passed.
    pub async fn lease_overdue(&self) -> Result<LeasedBatch, DispatchError> {
        self.lease(BatchKind::Overdue).await
    }

    async fn lease(&self, kind: BatchKind) -> Result<LeasedBatch, DispatchError> {
        let request = self.lease_request()?;
        let ends = tokio::time::Instant::now() + self.settings.lease;
        let leasing = async {
            Ok(match kind {
                BatchKind::Due => self.store.lease_due(&request).await?,
                BatchKind::Overdue => self.store.lease_overdue(&request).await?,
            })
        };
        let lease = self.bounded("leasing a batch", leasing).await?;
        self.settings.observer.leased(&lease.orders);
        Ok(LeasedBatch { kind, lease, ends })
    }

    /// Creates every topic the relay produces to (audit, order events, each partner's), so a
    /// broker with auto-creation off, or one that lost its data, gets them back at start-up.
    /// A failure is logged: producing creates a topic it finds missing anyway. Gives up at
    /// once when `shutdown` is cancelled: against a broker that does not answer, each request
    /// waits out its timeout, and shutdown must not wait for them.
    pub async fn ensure_topics(&self, shutdown: &CancellationToken) {
        tokio::select! {
            () = shutdown.cancelled() => info!("shutdown: topics not ensured, producing creates them"),
            () = self.ensure_all_topics() => {}
        }
    }

    async fn ensure_all_topics(&self) {
        let mut topics = vec![
            self.settings.topics.audit.clone(),
            self.settings.topics.order_events.clone(),
        ];
        match self.store.list_partners().await {
            // Information, not a warning: `waybill dev` enrols its partners a moment after
            // start. An order that meets no routes says so itself (its UNROUTABLE reason).
            Ok(partners) if partners.is_empty() => info!(
                "no partners enrolled yet: orders go UNROUTABLE until partners and routes are \
                 set (DispatchAdmin EnrollPartner and SetRoute); RetryDispatches sends them then"
            ),
            Ok(partners) => topics.extend(partners.into_iter().map(|p| p.topic)),
            Err(error) => warn!(%error, "cannot list partners to ensure their topics"),
        }
        let ensured = futures::future::join_all(topics.iter().map(|t| self.topics.ensure_topic(t)));
        for error in ensured.await.into_iter().filter_map(Result::err) {
            warn!(%error, "cannot ensure a topic at start-up; producing will try again");
        }
    }

    /// The retry rules of this instance.
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempt_budget: i32::try_from(self.settings.attempt_budget).unwrap_or(i32::MAX),
            backoff: self.settings.backoff,
        }
    }

    /// When to try again after the `failures`-th failure in a row (exponential, full jitter).
    fn retry_at(&self, failures: i32, now: DateTime<Utc>) -> DateTime<Utc> {
        self.retry_policy()
            .retry_at(failures, now, &mut rand::rng())
    }

    /// Records a batch's outcome, fenced by its lease, and ends the lease. Rows whose lease was
    /// lost are left alone.
    pub async fn record(
        &self,
        batch: LeasedBatch,
        record: &BatchRecord,
    ) -> Result<RecordReport, DispatchError> {
        if record.updates.is_empty() {
            self.store.release(batch.lease).await?;
            return Ok(RecordReport::default());
        }
        let batch_id = batch.fence().batch_id;
        let report = self
            .store
            .record(batch.lease, record, self.clock.now())
            .await?;
        if !report.fenced.is_empty() {
            warn!(%batch_id, fenced = report.fenced.len(), "lease lost before bookkeeping; another instance owns these orders now");
            self.metrics.add_fenced(report.fenced.len() as u64);
        }
        self.metrics.add_recorded(report.applied.len() as u64);
        Ok(report)
    }

    /// Produces and records one leased batch: how many orders it held. Given up when its lease
    /// ends (the database called unavailable; the rows go to the next lease).
    pub async fn relay_batch(&self, batch: LeasedBatch) -> Result<usize, DispatchError> {
        let left = batch
            .ends
            .saturating_duration_since(tokio::time::Instant::now());
        within(left, "a leased batch's produce and bookkeeping", async {
            self.produce_and_record(batch).await
        })
        .await
    }

    async fn produce_and_record(&self, batch: LeasedBatch) -> Result<usize, DispatchError> {
        let leased = batch.orders().len();
        if leased > 0 {
            let record = match self.produce(&batch).await {
                Ok(record) => record,
                Err(error) => {
                    // Free the rows now rather than when the lease's connection is next used.
                    if let Err(release) = self.store.release(batch.lease).await {
                        warn!(error = %release, "cannot give a lease back; it ends by itself");
                    }
                    return Err(error);
                }
            };
            self.record(batch, &record).await?;
        }
        Ok(leased)
    }

    /// Due rows, then (if `with_overdue`) overdue rows: how many of each were leased.
    async fn relay_due_and_overdue(
        &self,
        with_overdue: bool,
    ) -> Result<(usize, usize), DispatchError> {
        let due = self.relay_batch(self.lease_due().await?).await?;
        let overdue = if with_overdue {
            self.relay_batch(self.lease_overdue().await?).await?
        } else {
            0
        };
        Ok((due, overdue))
    }

    /// One cycle: due rows, then (if `with_overdue`) overdue rows, then events and audit copies.
    pub async fn run_cycle(&self, with_overdue: bool) -> Result<CycleReport, DispatchError> {
        let limit = self.settings.batch_size as usize;
        let (due, overdue) = self.relay_due_and_overdue(with_overdue).await?;
        let published = self.publish_events().await?;
        self.publish_audits().await?;
        Ok(CycleReport {
            due,
            overdue,
            events: published.events,
            full: due >= limit || overdue >= limit || published.more,
        })
    }

    /// Runs until `shutdown`, then gives up this instance's leases and flushes the producer.
    ///
    /// Loops run side by side: `batches_in_flight` dispatching loops (due rows, and overdue
    /// rows at most once per poll interval), each with its own lease — the first woken by new
    /// rows, the others by a full batch, so that under a backlog one batch is produced while
    /// another's outcome is recorded (`wake.rs`); and event publishing, so that a slow
    /// order-events topic never delays an order on its way to a partner. Work in flight at
    /// shutdown gets `grace` to finish.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) {
        info!(
            instance_id = %self.settings.instance_id,
            batch_size = self.settings.batch_size,
            batches_in_flight = self.settings.batches_in_flight,
            "relay started"
        );
        let last_overdue_scan = std::sync::Mutex::new(None::<Instant>);
        // Dispatching wakes for new outbox rows, and its other loops for a backlog; publishing
        // for any new history event (see `wake.rs`). Subscribed before the first cycle, so no
        // commit after it goes unseen.
        let wakeups = wake::Wakeups::default();
        let (relay, scan, backlog) = (&self, &last_overdue_scan, &wakeups.backlog);
        // Shared references only, so every loop gets a copy of the same step.
        let dispatch_step = move || async move {
            let with_overdue = {
                let mut last = scan.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let due = last.is_none_or(|at| at.elapsed() >= relay.settings.poll_interval);
                if due {
                    *last = Some(Instant::now());
                }
                due
            };
            let limit = relay.settings.batch_size as usize;
            let (due, overdue) = relay.relay_due_and_overdue(with_overdue).await?;
            let full = due >= limit || overdue >= limit;
            if full {
                backlog.notify_one();
            }
            Ok(full)
        };
        let forwarding = wakeups.forward(self.feed.subscribe(), &shutdown);
        let dispatching =
            futures::future::join_all((0..self.settings.batches_in_flight.max(1)).map(|loop_| {
                let wake = match loop_ {
                    0 => &wakeups.dispatch,
                    _ => &wakeups.backlog,
                };
                self.drive(
                    "dispatch",
                    &shutdown,
                    grace,
                    (wake, Duration::ZERO),
                    dispatch_step,
                )
            }));
        let publishing = self.drive(
            "publish events",
            &shutdown,
            grace,
            (&wakeups.publish, self.settings.publish_interval),
            || async {
                let limit = self.settings.batch_size as usize;
                let events = self.publish_events().await?;
                let audits = self.publish_audits().await?;
                Ok(events.more || audits >= limit)
            },
        );
        let retention = async {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(self.settings.cleanup_interval) => {}
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    result = self.clean_up() => if let Err(error) = result {
                        warn!(%error, "retention job failed, will run again");
                    },
                }
            }
        };
        // Topics are ensured alongside, not first: a slow admin API must not hold back orders
        // whose topics exist.
        tokio::join!(
            forwarding,
            self.ensure_topics(&shutdown),
            dispatching,
            publishing,
            retention
        );
        self.stop().await;
    }

    /// Runs `step` until `shutdown`: again at once while it reports a full batch, otherwise
    /// after the next wake-up or the poll interval, whichever comes first, and no sooner than
    /// `spacing` after the last step started.
    async fn drive<F, Fut>(
        &self,
        name: &str,
        shutdown: &CancellationToken,
        grace: Duration,
        (wake, spacing): (&tokio::sync::Notify, Duration),
        mut step: F,
    ) where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool, DispatchError>>,
    {
        while !shutdown.is_cancelled() {
            let started = tokio::time::Instant::now();
            let outcome = tokio::select! {
                result = step() => Some(result),
                () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => None,
            };
            let full = match outcome {
                None => {
                    warn!(
                        task = name,
                        "shutdown grace over, abandoning the work in flight (its leases are released)"
                    );
                    break;
                }
                Some(Ok(full)) => full,
                Some(Err(error)) => {
                    warn!(task = name, %error, retryable = error.is_retryable(), "relay step failed");
                    false
                }
            };
            if full {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
            if started.elapsed() < spacing {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep_until(started + spacing) => {}
                }
            }
        }
    }

    async fn stop(&self) {
        let releasing = async {
            let (owner, now) = (&self.settings.instance_id, self.clock.now());
            Ok(self.store.release_leases(owner, now).await?)
        };
        match self
            .bounded("releasing the leases at shutdown", releasing)
            .await
        {
            Ok(released) => info!(released, "relay stopped, leases released"),
            Err(error) => warn!(%error, "cannot release leases; they expire by themselves"),
        }
        let producer = self.producer.clone();
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        if !matches!(flushed, Ok(Ok(()))) {
            warn!("kafka producer not fully flushed at shutdown");
        }
    }
}
