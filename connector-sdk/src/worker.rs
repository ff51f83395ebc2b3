//! What happens to one record, on the async runtime: an order goes through the inbox to the
//! adapter (with a timeout and retries) and its answer back to the inbox; a record that is not
//! an order is set aside. Returns whether the record's work is safe (its offset may be
//! committed) or was abandoned (revocation or shutdown: the next owner redoes it).

use std::{future::Future, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use futures::FutureExt as _;

use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, error, info, info_span, warn};
use waybill_kafka_client::log::LogContext;

use crate::{
    clock::SharedClock,
    delivery::ReportSender,
    domain::{
        backoff::Backoff,
        order::{
            AdapterRetry, AfterCall, AfterStore, Answer, CallResult, OnDelivery, OnUndecodable,
            after_call, after_store, answer, on_delivery, on_undecodable,
        },
    },
    envelope::IncomingOrder,
    inbox::{Inbox, InboxError, OrderDelivery, OrderState, RecordOrigin},
    metrics::ConnectorMetrics,
    observe::{Observer, Step},
    partner::{Acceptance, ShipmentContext, TransportPartner},
};

/// The dead-letter record's header naming why it was set aside.
pub const DEAD_LETTER_REASON: &str = "waybill-dead-letter-reason";
/// The dead-letter record's header naming where it came from (`topic/partition/offset`).
pub const DEAD_LETTER_ORIGIN: &str = "waybill-dead-letter-origin";

/// A record as read, kept for the dead-letter topic.
#[derive(Debug, Clone)]
pub(crate) struct RawRecord {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

#[derive(Debug)]
pub(crate) enum JobKind {
    Order(Box<IncomingOrder>),
    Undecodable(String),
}

/// One record's work.
#[derive(Debug)]
pub(crate) struct Job {
    pub origin: RecordOrigin,
    pub epoch: u64,
    pub lane: String,
    pub kind: JobKind,
    pub raw: RawRecord,
    pub cancel: CancellationToken,
}

/// Per-cluster things a job needs.
pub(crate) struct ClusterSink {
    pub name: String,
    pub dead_letter_topic: String,
    pub producer: FutureProducer<LogContext>,
}

impl std::fmt::Debug for ClusterSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSink")
            .field("name", &self.name)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .finish_non_exhaustive()
    }
}

/// Adapter-call settings.
#[derive(Debug, Clone)]
pub(crate) struct WorkerSettings {
    pub adapter_timeout: Duration,
    pub adapter_retry: AdapterRetry,
}

/// Everything jobs share.
pub(crate) struct Worker<P> {
    pub partner_id: String,
    pub adapter: Arc<P>,
    pub inbox: Arc<dyn Inbox>,
    pub settings: WorkerSettings,
    pub metrics: Arc<ConnectorMetrics>,
    pub reports: Arc<ReportSender>,
    pub observer: Observer,
    pub clock: SharedClock,
}

impl<P: TransportPartner> Worker<P> {
    /// Runs `job`; `true` when its work is safe.
    pub async fn run(&self, job: Job, sink: &ClusterSink) -> bool {
        match &job.kind {
            JobKind::Order(incoming) => {
                let span = info_span!("waybill.connector.order",
                    order_id = %incoming.order.order_id,
                    messaging.system = "kafka",
                    messaging.destination.name = %job.origin.topic,
                    messaging.destination.partition.id = job.origin.partition,
                    messaging.kafka.offset = job.origin.offset,
                    trace_id = crate::trace::trace_id(incoming.traceparent.as_deref()).unwrap_or(""),
                    otel.kind = "consumer",
                );
                let traceparent =
                    crate::trace::continue_in_span(&span, incoming.traceparent.as_deref());
                self.order(&job, incoming, sink, traceparent)
                    .instrument(span)
                    .await
            }
            JobKind::Undecodable(reason) => self.undecodable(&job, reason, sink).await,
        }
    }

    async fn order(
        &self,
        job: &Job,
        incoming: &IncomingOrder,
        sink: &ClusterSink,
        traceparent: Option<String>,
    ) -> bool {
        let order_id = incoming.order.order_id.clone();
        let delivery = OrderDelivery {
            order_id: order_id.clone(),
            reply_to: incoming.reply_to.clone(),
            region: incoming.region.clone(),
            traceparent: traceparent.clone(),
        };
        let Some(row) = self
            .inbox_op(&job.cancel, || {
                self.inbox.begin(&self.partner_id, &delivery)
            })
            .await
        else {
            return false;
        };
        self.observer.step(&order_id, Step::Recorded);
        match on_delivery(&row) {
            OnDelivery::AnswerFromInbox => {
                ConnectorMetrics::add(&self.metrics.duplicates_skipped);
                info!(
                    deliveries = row.deliveries,
                    state = row.state.as_str(),
                    "order delivered again, answered from the inbox without calling the adapter"
                );
                // A pending report of this order is (re)sent by the report sender's scan.
                self.reports.wake.notify_one();
                return true;
            }
            OnDelivery::CallAgain => {
                info!(
                    deliveries = row.deliveries,
                    "order seen before without a stored answer, asking the adapter again with the same idempotency key"
                );
            }
            OnDelivery::FirstCall => ConnectorMetrics::add(&self.metrics.orders_started),
        }

        let mut attempt = 0_u32;
        loop {
            attempt += 1;
            let ctx = ShipmentContext {
                partner_id: self.partner_id.clone(),
                order_id: order_id.clone(),
                region: incoming.region.clone(),
                reply_to: incoming.reply_to.clone(),
                cluster: sink.name.clone(),
                traceparent: traceparent.clone(),
                tracestate: incoming.tracestate.clone(),
                attempt,
                send_count: incoming.order.send_count,
                deadline: self.settings.adapter_timeout,
            };
            // The first call was counted with the delivery (`begin`).
            if attempt > 1
                && self
                    .inbox_op(&job.cancel, || {
                        self.inbox.note_adapter_call(&self.partner_id, &order_id)
                    })
                    .await
                    .is_none()
            {
                return false;
            }
            ConnectorMetrics::add(&self.metrics.adapter_calls);
            self.observer.step(&order_id, Step::AdapterCalled);
            // A panicking adapter must not kill the job (its lane and offset would never
            // finish): it is caught and treated as a permanent failure.
            let call = tokio::time::timeout(
                self.settings.adapter_timeout,
                AssertUnwindSafe(self.adapter.request_shipment(&incoming.order, &ctx))
                    .catch_unwind(),
            );
            let called = tokio::select! {
                () = job.cancel.cancelled() => return false,
                called = call => called,
            };
            let result = match called {
                Ok(Ok(Ok(acceptance))) => CallResult::Answered(acceptance),
                Ok(Ok(Err(error))) => CallResult::Failed(error),
                Ok(Err(_panic)) => CallResult::Panicked,
                Err(_) => {
                    ConnectorMetrics::add(&self.metrics.adapter_timeouts);
                    CallResult::TimedOut(self.settings.adapter_timeout)
                }
            };
            let decision = after_call(
                result,
                attempt,
                &self.settings.adapter_retry,
                &mut rand::rng(),
            );
            let (delay, failure) = match decision {
                AfterCall::Store(acceptance) => {
                    self.observer.step(&order_id, Step::Answered);
                    return self
                        .store_answer(job, incoming, &order_id, acceptance, traceparent)
                        .await;
                }
                AfterCall::SetAside(reason) => {
                    return self.set_aside_order(job, &order_id, &reason, sink).await;
                }
                AfterCall::Retry { delay, failure } => (delay, failure),
            };
            ConnectorMetrics::add(&self.metrics.adapter_retries);
            warn!(attempt, error = %failure, retry_in_ms = delay.as_millis() as u64,
                "adapter call failed, retrying this order (other orders keep flowing)");
            tokio::select! {
                () = job.cancel.cancelled() => return false,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn store_answer(
        &self,
        job: &Job,
        incoming: &IncomingOrder,
        order_id: &str,
        acceptance: Acceptance,
        traceparent: Option<String>,
    ) -> bool {
        let made = answer(
            order_id,
            acceptance,
            &incoming.reply_to,
            traceparent,
            self.clock.now(),
        );
        let reports = made.reports();
        let Answer {
            answer,
            report,
            later,
        } = made;
        let Some(stored) = self
            .inbox_op(&job.cancel, || {
                self.inbox
                    .record_answer(&self.partner_id, order_id, &answer, &reports)
            })
            .await
        else {
            return false;
        };
        self.observer.step(order_id, Step::AnswerStored);
        match stored.state {
            OrderState::Accepted => {
                ConnectorMetrics::add(&self.metrics.orders_accepted);
                self.metrics
                    .observe_answered(incoming.order.placed_at.as_ref(), self.clock.now());
                info!(tracking_id = %stored.tracking_id, "order accepted by the partner");
            }
            OrderState::Rejected => {
                ConnectorMetrics::add(&self.metrics.orders_rejected);
                self.metrics
                    .observe_answered(incoming.order.placed_at.as_ref(), self.clock.now());
                info!(reason = %stored.reason, "order rejected by the partner");
            }
            OrderState::Started | OrderState::SetAside => {}
        }
        match after_store(&answer, &stored) {
            // Ours is the answer stored (or another instance's identical one: the same report
            // id and content, so at worst StatusIngest sees a duplicate): send it now.
            AfterStore::Submit => {
                self.reports.submit(report);
                // The scan times the reports scheduled for later: woken, it sleeps until the
                // earliest is due rather than its usual while.
                if !later.is_empty() {
                    self.reports.wake.notify_one();
                }
            }
            AfterStore::WakeScan => self.reports.wake.notify_one(),
        }
        true
    }

    async fn set_aside_order(
        &self,
        job: &Job,
        order_id: &str,
        reason: &str,
        sink: &ClusterSink,
    ) -> bool {
        error!(reason, "order set aside: dead-letter topic and inbox");
        self.dead_letter(job, reason, sink).await;
        let kept = self
            .inbox_op(&job.cancel, || {
                self.inbox
                    .set_aside_order(&self.partner_id, order_id, &job.origin, reason)
            })
            .await
            .is_some();
        // Counted once the inbox holds it: whoever reads the count finds the row.
        if kept {
            ConnectorMetrics::add(&self.metrics.set_aside);
        }
        kept
    }

    async fn undecodable(&self, job: &Job, reason: &str, sink: &ClusterSink) -> bool {
        let Some(seen) = self
            .inbox_op(&job.cancel, || {
                self.inbox.was_set_aside(&self.partner_id, &job.origin)
            })
            .await
        else {
            return false;
        };
        if on_undecodable(seen) == OnUndecodable::Done {
            return true;
        }
        warn!(topic = %job.origin.topic, partition = job.origin.partition,
            offset = job.origin.offset, key = %job.origin.key, reason,
            "record is not an order, set aside: dead-letter topic and inbox");
        self.dead_letter(job, reason, sink).await;
        let kept = self
            .inbox_op(&job.cancel, || {
                self.inbox
                    .set_aside_record(&self.partner_id, &job.origin, reason)
            })
            .await
            .is_some();
        if kept {
            ConnectorMetrics::add(&self.metrics.set_aside);
        }
        kept
    }

    /// Produces the record to the partner's dead-letter topic with the reason. A failure is
    /// counted and logged; the inbox row keeps the record's place and reason either way.
    async fn dead_letter(&self, job: &Job, reason: &str, sink: &ClusterSink) {
        let mut headers = OwnedHeaders::new_with_capacity(job.raw.headers.len() + 2);
        for (name, value) in &job.raw.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_slice()),
            });
        }
        let origin = format!(
            "{}/{}/{}",
            job.origin.topic, job.origin.partition, job.origin.offset
        );
        headers = headers
            .insert(Header {
                key: DEAD_LETTER_REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: DEAD_LETTER_ORIGIN,
                value: Some(&origin),
            });
        let mut record = FutureRecord::to(&sink.dead_letter_topic)
            .payload(&job.raw.payload)
            .headers(headers);
        if let Some(key) = &job.raw.key {
            record = record.key(key);
        }
        if let Err((error, _)) = sink.producer.send(record, Duration::from_secs(10)).await {
            ConnectorMetrics::add(&self.metrics.dead_letter_failures);
            warn!(topic = %sink.dead_letter_topic, %error, "cannot produce the dead-letter record");
        }
    }

    /// Runs an inbox operation until it succeeds (the inbox is the truth: without it nothing
    /// may proceed), backing off between tries; `None` when the job was cancelled meanwhile.
    async fn inbox_op<T, F, Fut>(&self, cancel: &CancellationToken, op: F) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, InboxError>>,
    {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        };
        let mut failures = 0_u32;
        loop {
            match op().await {
                Ok(value) => return Some(value),
                Err(error) => {
                    failures += 1;
                    ConnectorMetrics::add(&self.metrics.inbox_errors);
                    warn!(%error, failures, "inbox unavailable, retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return None,
                        () = tokio::time::sleep(backoff.jittered(failures)) => {}
                    }
                }
            }
        }
    }
}
