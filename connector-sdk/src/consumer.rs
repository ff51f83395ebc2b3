//! Consuming one cluster's partner topic.
//!
//! **Consumer model: a `BaseConsumer` polled on a thread of its own, the work on the async
//! runtime.** The poll thread owns every partition's [`PartitionLedger`] and is the only one
//! that commits; each record becomes a job spawned on the tokio runtime, whose completion comes
//! back over a channel. Why not a `StreamConsumer` with per-partition tasks: the rebalance
//! callbacks run inside `poll`, and a safe revocation must *block* there — wait (within a
//! bound) for the revoked partitions' in-flight jobs, fence the late ones, commit the
//! contiguous watermark — before librdkafka hands the partitions to another member. Blocking
//! is harmless on a dedicated thread and would stall an async worker thread. Commits are
//! synchronous librdkafka calls for the same reason.
//!
//! **Safety rules.** Offsets are committed only up to the contiguous point below which every
//! record is safe (answered and stored, or set aside). On revocation the partition's waiting
//! jobs are dropped, running ones get `revoke_bound` to finish, then the partition's epoch is
//! retired and its cancellation token fired: a job finishing later carries the old epoch and
//! cannot move any offset, and the new owner starts from the committed watermark (the shared
//! or local inbox de-duplicates whatever it sees again). Too many records in flight in one
//! partition pause it until half of them are done, so a stuck key cannot fill memory.
//!
//! Position on assignment comes from the group's committed offsets; the inbox, not the
//! offset, decides whether a record is new, so re-reading a few records is harmless.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, ClientContext, Message as _, Offset, TopicPartitionList,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    error::KafkaError,
    message::{BorrowedMessage, Headers as _},
};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use waybill_kafka_client::log::ClientLog;

use crate::{
    domain::{
        ledger::PartitionLedger,
        partition::{Cadence, pause, resume},
    },
    envelope::decode_dispatched_order,
    inbox::RecordOrigin,
    metrics::{ConnectorHealth, ConnectorMetrics, PartitionHealth},
    partner::TransportPartner,
    worker::{ClusterSink, Job, JobKind, RawRecord, Worker},
};

/// How long one `poll` waits: also the longest delay before a finished job's successor in
/// the same key starts.
const POLL_TIMEOUT: Duration = Duration::from_millis(20);

/// The poll loop's settings.
#[derive(Debug, Clone)]
pub(crate) struct PollSettings {
    pub topic: String,
    pub max_in_flight: usize,
    pub revoke_bound: Duration,
    pub shutdown_grace: Duration,
    pub commit_interval: Duration,
}

struct Completion {
    partition: i32,
    offset: i64,
    epoch: u64,
    lane: String,
    safe: bool,
}

struct Slot {
    epoch: u64,
    ledger: PartitionLedger<Job>,
    cancel: CancellationToken,
    paused: bool,
    lag: Option<i64>,
}

struct PollState {
    partitions: HashMap<i32, Slot>,
    next_epoch: u64,
    completions: mpsc::Receiver<Completion>,
}

/// The consumer context: rebalance callbacks run on the poll thread, inside `poll`.
pub(crate) struct PollContext<P> {
    state: Mutex<PollState>,
    completions: mpsc::Sender<Completion>,
    worker: Arc<Worker<P>>,
    sink: Arc<ClusterSink>,
    runtime: Handle,
    settings: PollSettings,
    health: ConnectorHealth,
    cluster_index: usize,
    /// librdkafka's lines, as `LogContext` writes them (shared with the cluster's dead-letter
    /// producer, whose context it is).
    log: ClientLog,
}

impl<P: TransportPartner> ClientContext for PollContext<P> {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.log.log(level as i32, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error.rdkafka_error_code(), &error, reason);
    }
}

impl<P: TransportPartner> ConsumerContext for PollContext<P> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let partitions = self.partitions_of(list);
                info!(cluster = %self.sink.name, ?partitions, "partitions revoked, releasing them");
                self.release(consumer, &partitions, self.settings.revoke_bound);
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(error) => warn!(cluster = %self.sink.name, %error, "rebalance failed"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            self.log.reachable();
            let partitions = self.partitions_of(list);
            info!(cluster = %self.sink.name, ?partitions, "partitions assigned");
            let mut state = self.lock();
            for partition in partitions {
                let epoch = state.next_epoch;
                state.next_epoch += 1;
                state.partitions.entry(partition).or_insert_with(|| Slot {
                    epoch,
                    ledger: PartitionLedger::default(),
                    cancel: CancellationToken::new(),
                    paused: false,
                    lag: None,
                });
            }
            self.publish_health(&state);
        }
    }
}

impl<P: TransportPartner> PollContext<P> {
    pub fn new(
        worker: Arc<Worker<P>>,
        sink: Arc<ClusterSink>,
        runtime: Handle,
        settings: PollSettings,
        health: ConnectorHealth,
        cluster_index: usize,
        log: ClientLog,
    ) -> Self {
        let (completions, receiver) = mpsc::channel();
        Self {
            state: Mutex::new(PollState {
                partitions: HashMap::new(),
                next_epoch: 1,
                completions: receiver,
            }),
            completions,
            worker,
            sink,
            runtime,
            settings,
            health,
            cluster_index,
            log,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PollState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn partitions_of(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements()
            .iter()
            .filter(|e| e.topic() == self.settings.topic)
            .map(|e| e.partition())
            .collect()
    }

    fn spawn(&self, partition: i32, job: Job) {
        let worker = Arc::clone(&self.worker);
        let sink = Arc::clone(&self.sink);
        let completions = self.completions.clone();
        let (offset, epoch, lane) = (job.origin.offset, job.epoch, job.lane.clone());
        self.runtime.spawn(async move {
            let safe = worker.run(job, &sink).await;
            // The poll thread may be gone (shutdown): nothing left to tell.
            let _ = completions.send(Completion {
                partition,
                offset,
                epoch,
                lane,
                safe,
            });
        });
    }

    fn on_message(&self, consumer: &BaseConsumer<Self>, message: &BorrowedMessage<'_>) {
        let partition = message.partition();
        let offset = message.offset();
        let mut state = self.lock();
        // Not (or no longer) ours: whoever owns the partition reads it.
        let Some(slot) = state.partitions.get_mut(&partition) else {
            return;
        };
        ConnectorMetrics::add(&self.worker.metrics.records_received);
        let headers: Vec<(String, Vec<u8>)> = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        let raw = RawRecord {
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        };
        let decoded = decode_dispatched_order(
            raw.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
            &raw.payload,
        );
        let (lane, kind) = match decoded {
            Ok(incoming) => {
                self.worker
                    .observer
                    .step(&incoming.order.order_id, crate::observe::Step::Consumed);
                (
                    incoming.order.order_id.clone(),
                    JobKind::Order(Box::new(incoming)),
                )
            }
            // Each undecodable record is its own lane: it holds back nothing.
            Err(error) => (
                format!("\0undecodable-{offset}"),
                JobKind::Undecodable(error.to_string()),
            ),
        };
        let job = Job {
            origin: RecordOrigin {
                cluster: self.sink.name.clone(),
                topic: message.topic().to_owned(),
                partition,
                offset,
                key: String::from_utf8_lossy(raw.key.as_deref().unwrap_or_default()).into_owned(),
            },
            epoch: slot.epoch,
            lane: lane.clone(),
            kind,
            raw,
            cancel: slot.cancel.clone(),
        };
        let start = slot.ledger.receive(offset, &lane, job);
        if pause(
            slot.ledger.in_flight(),
            self.settings.max_in_flight,
            slot.paused,
        ) {
            let mut list = TopicPartitionList::new();
            list.add_partition(&self.settings.topic, partition);
            match consumer.pause(&list) {
                Ok(()) => {
                    slot.paused = true;
                    info!(cluster = %self.sink.name, partition, in_flight = slot.ledger.in_flight(),
                        "partition paused: too many records in flight");
                }
                Err(error) => warn!(%error, partition, "cannot pause partition"),
            }
        }
        drop(state);
        if let Some(job) = start {
            self.spawn(partition, job);
        }
    }

    /// Applies one completion; fenced when its epoch is not the partition's current one.
    fn settle(&self, state: &mut PollState, completion: Completion) {
        let Some(slot) = state
            .partitions
            .get_mut(&completion.partition)
            .filter(|slot| slot.epoch == completion.epoch)
        else {
            ConnectorMetrics::add(&self.worker.metrics.fenced_completions);
            debug!(
                partition = completion.partition,
                offset = completion.offset,
                "completion after the partition was released, ignored"
            );
            return;
        };
        if let Some(next) = slot
            .ledger
            .finish(completion.offset, &completion.lane, completion.safe)
        {
            self.spawn(completion.partition, next);
        }
    }

    fn drain_completions(&self, consumer: &BaseConsumer<Self>) {
        let mut state = self.lock();
        while let Ok(completion) = state.completions.try_recv() {
            self.settle(&mut state, completion);
        }
        let resumable: Vec<i32> = state
            .partitions
            .iter()
            .filter(|(_, slot)| {
                resume(
                    slot.ledger.in_flight(),
                    self.settings.max_in_flight,
                    slot.paused,
                )
            })
            .map(|(partition, _)| *partition)
            .collect();
        for partition in resumable {
            let mut list = TopicPartitionList::new();
            list.add_partition(&self.settings.topic, partition);
            if consumer.resume(&list).is_ok()
                && let Some(slot) = state.partitions.get_mut(&partition)
            {
                slot.paused = false;
                info!(cluster = %self.sink.name, partition, "partition resumed");
            }
        }
    }

    /// Commits every partition's safe offset that moved.
    fn commit(
        &self,
        consumer: &BaseConsumer<Self>,
        state: &mut PollState,
        partitions: Option<&[i32]>,
        mode: CommitMode,
    ) {
        let mut list = TopicPartitionList::new();
        let mut offsets = Vec::new();
        for (partition, slot) in &state.partitions {
            if partitions.is_some_and(|only| !only.contains(partition)) {
                continue;
            }
            if let Some(offset) = slot.ledger.to_commit()
                && list
                    .add_partition_offset(&self.settings.topic, *partition, Offset::Offset(offset))
                    .is_ok()
            {
                offsets.push((*partition, offset));
            }
        }
        if offsets.is_empty() {
            return;
        }
        match consumer.commit(&list, mode) {
            Ok(()) => {
                ConnectorMetrics::add(&self.worker.metrics.commits);
                for (partition, offset) in offsets {
                    if let Some(slot) = state.partitions.get_mut(&partition) {
                        slot.ledger.committed(offset);
                    }
                }
            }
            Err(error) => {
                ConnectorMetrics::add(&self.worker.metrics.commit_failures);
                warn!(cluster = %self.sink.name, %error, "offset commit failed, retried at the next interval");
            }
        }
    }

    /// Releases `partitions`: drops waiting jobs, gives running ones `bound` to finish,
    /// fences the rest, commits the safe offsets.
    fn release(&self, consumer: &BaseConsumer<Self>, partitions: &[i32], bound: Duration) {
        let mut state = self.lock();
        for partition in partitions {
            if let Some(slot) = state.partitions.get_mut(partition) {
                slot.ledger.drop_waiting();
            }
        }
        let deadline = Instant::now() + bound;
        loop {
            let running: usize = partitions
                .iter()
                .filter_map(|p| state.partitions.get(p))
                .map(|slot| slot.ledger.running())
                .sum();
            let now = Instant::now();
            if running == 0 || now >= deadline {
                break;
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            match state.completions.recv_timeout(wait) {
                Ok(completion) => self.settle(&mut state, completion),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        self.commit(consumer, &mut state, Some(partitions), CommitMode::Sync);
        for partition in partitions {
            if let Some(slot) = state.partitions.remove(partition) {
                // Fence: late completions carry this epoch, which no longer exists.
                slot.cancel.cancel();
                let abandoned = slot.ledger.running();
                if abandoned > 0 {
                    self.worker
                        .metrics
                        .abandoned
                        .fetch_add(abandoned as u64, std::sync::atomic::Ordering::Relaxed);
                    warn!(cluster = %self.sink.name, partition, abandoned,
                        committed = ?slot.ledger.last_committed(),
                        "in-flight orders abandoned at release, the next owner redoes them");
                }
            }
        }
        self.publish_health(&state);
    }

    /// Asks the broker for each partition's high watermark (a request per partition, so
    /// only every [`LAG_INTERVAL`](crate::domain::partition::LAG_INTERVAL)) and records the lag behind the safe offset. `false` when
    /// some watermark could not be read.
    fn refresh_lag(&self, consumer: &BaseConsumer<Self>) -> bool {
        let partitions: Vec<i32> = self.lock().partitions.keys().copied().collect();
        let asked = partitions.len();
        let mut highs = Vec::new();
        for partition in partitions {
            if let Ok((_, high)) = consumer.fetch_watermarks(
                &self.settings.topic,
                partition,
                Duration::from_millis(500),
            ) {
                highs.push((partition, high));
            }
        }
        let complete = highs.len() == asked;
        if !highs.is_empty() {
            self.log.reachable();
        }
        let mut state = self.lock();
        for (partition, high) in highs {
            if let Some(slot) = state.partitions.get_mut(&partition)
                && let Some(safe) = slot.ledger.safe_offset()
                && high >= 0
            {
                slot.lag = Some((high - safe).max(0));
            }
        }
        self.publish_health(&state);
        complete
    }

    fn publish_health(&self, state: &PollState) {
        self.health.update_cluster(self.cluster_index, |cluster| {
            cluster.partitions = state
                .partitions
                .iter()
                .map(|(partition, slot)| {
                    (
                        *partition,
                        PartitionHealth {
                            in_flight: slot.ledger.in_flight(),
                            committed: slot.ledger.last_committed(),
                            lag: slot.lag,
                            paused: slot.paused,
                        },
                    )
                })
                .collect();
        });
    }
}

/// Builds the consumer for one cluster.
pub(crate) fn create_consumer<P: TransportPartner>(
    config: &ClientConfig,
    context: PollContext<P>,
) -> Result<BaseConsumer<PollContext<P>>, rdkafka::error::KafkaError> {
    config.create_with_context(context)
}

/// The poll loop: runs until `shutdown`, then releases every partition within the shutdown
/// grace, commits, and closes the consumer (leaving the group at once).
pub(crate) fn poll_loop<P: TransportPartner>(
    consumer: BaseConsumer<PollContext<P>>,
    shutdown: CancellationToken,
) {
    let context = consumer.context();
    let topic = context.settings.topic.clone();
    if let Err(error) = consumer.subscribe(&[&topic]) {
        warn!(%error, topic, "cannot subscribe");
        return;
    }
    context
        .health
        .update_cluster(context.cluster_index, |cluster| cluster.polling = true);
    let mut cadence = Cadence::new(context.settings.commit_interval, Instant::now());
    while !shutdown.is_cancelled() {
        match consumer.poll(POLL_TIMEOUT) {
            Some(Ok(message)) => {
                context.log.reachable();
                context.on_message(&consumer, &message);
            }
            // Broker errors repeat every poll while they last: logged once per change.
            Some(Err(error)) => context.log.error(error.rdkafka_error_code(), &error, ""),
            None => {}
        }
        context.drain_completions(&consumer);
        if cadence.commit_due(Instant::now()) {
            {
                let mut state = context.lock();
                context.commit(&consumer, &mut state, None, CommitMode::Async);
                context.publish_health(&state);
            }
            cadence.committed(Instant::now());
        }
        if cadence.lag_due(Instant::now()) {
            // A watermark request that timed out is tried again in a second, not an interval.
            let complete = context.refresh_lag(&consumer);
            cadence.lag_measured(Instant::now(), complete);
        }
    }
    let partitions: Vec<i32> = context.lock().partitions.keys().copied().collect();
    info!(cluster = %context.sink.name, ?partitions, "stopping: finishing in-flight orders");
    context.release(&consumer, &partitions, context.settings.shutdown_grace);
    context
        .health
        .update_cluster(context.cluster_index, |cluster| cluster.polling = false);
    drop(consumer);
}
