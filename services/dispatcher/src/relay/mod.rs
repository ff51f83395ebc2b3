//! The relay: from the outbox to the partners' topics.
//!
//! One cycle: lease a batch of due rows → route each order (partners and routes re-read per
//! batch, so changes apply without a restart) → produce every message of the batch at once →
//! record every outcome in one fenced transaction. Then the same for `SENT` orders whose
//! handover deadline passed (re-send or flag). Beside it, `publish` puts new history events
//! on the order-events topic and audit copies waiting in the audit outbox on the audit topic.
//!
//! Sending goes through [`OrderProducer`], which replaces itself when it breaks; a message
//! whose topic the broker does not know gets its topic created and one more try.
//!
//! The loop wakes on the database's change feed (Postgres `NOTIFY` from other processes, an
//! in-process signal otherwise) and polls only as a fallback. It never keeps a "last seen id"
//! cursor: ids do not commit in id order, so each cycle asks the database what is due now.
//!
//! Every step is also a public method ([`Relay::lease_due`], [`Relay::dispatch`],
//! [`Relay::record`]) so tests can stop an instance between produce and bookkeeping.

use std::{
    collections::BTreeSet,
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn};
use uuid::Uuid;
use waybill_proto::v1::DispatchState;
use waybill_service_kit::{
    clock::SharedClock,
    db::{Change, ChangeFeed},
    telemetry::TraceContext,
};

mod publish;

use crate::{
    config::RelaySettings,
    domain::model::{LeasedOrder, PartnerRecord},
    error::DispatchError,
    kafka::{
        TopicCreator,
        messages::{Origin, OutgoingMessage, dispatched_order, order_message},
        producer::{OrderProducer, SendErrorKind, SendOutcome},
    },
    metrics::RelayMetrics,
    store::{
        AttemptLog, AuditCopy, BatchRecord, DispatchStore, Fence, LeaseRequest, RecordReport,
        RowUpdate,
    },
};

/// Which rows a batch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    /// `PENDING`/`RETRYING` rows due for a send.
    Due,
    /// `SENT` rows past their handover deadline.
    Overdue,
}

/// Rows under one lease.
#[derive(Debug, Clone)]
pub struct LeasedBatch {
    /// What bookkeeping must match.
    pub fence: Fence,
    /// Which rows these are.
    pub kind: BatchKind,
    /// The orders.
    pub orders: Vec<LeasedOrder>,
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

/// One dispatcher instance's relay.
#[derive(Debug, Clone)]
pub struct Relay {
    store: Arc<dyn DispatchStore>,
    producer: OrderProducer,
    topics: Arc<dyn TopicCreator>,
    /// Whether the latest attempt to publish events failed (so an outage is logged once).
    events_failing: Arc<AtomicBool>,
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
        store: Arc<dyn DispatchStore>,
        producer: OrderProducer,
        topics: Arc<dyn TopicCreator>,
        clock: SharedClock,
        feed: ChangeFeed,
        settings: RelaySettings,
        metrics: Arc<RelayMetrics>,
    ) -> Self {
        Self {
            store,
            producer,
            topics,
            events_failing: Arc::new(AtomicBool::new(false)),
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
            .map_err(|_| DispatchError::InvalidArgument("lease too long".to_owned()))?;
        Ok(LeaseRequest {
            owner: self.settings.instance_id.clone(),
            batch_id: Uuid::new_v4(),
            now,
            expires_at: now + lease,
            limit: self.settings.batch_size,
        })
    }

    /// Leases a batch of due rows.
    pub async fn lease_due(&self) -> Result<LeasedBatch, DispatchError> {
        let request = self.lease_request()?;
        let orders = self.store.lease_due(&request).await?;
        Ok(LeasedBatch {
            fence: fence_of(&request),
            kind: BatchKind::Due,
            orders,
        })
    }

    /// Leases a batch of `SENT` rows whose handover deadline passed.
    pub async fn lease_overdue(&self) -> Result<LeasedBatch, DispatchError> {
        let request = self.lease_request()?;
        let orders = self.store.lease_overdue(&request).await?;
        Ok(LeasedBatch {
            fence: fence_of(&request),
            kind: BatchKind::Overdue,
            orders,
        })
    }

    /// Routes and produces a batch; returns what must be recorded. Nothing is written here.
    pub async fn dispatch(&self, batch: &LeasedBatch) -> Result<BatchRecord, DispatchError> {
        if batch.orders.is_empty() {
            return Ok(BatchRecord::default());
        }
        let table = self.store.routing_table().await?;
        let origin = Origin {
            region: &self.settings.region,
            reply_to: &self.settings.reply_to,
        };
        let mut plans: Vec<Plan<'_>> = Vec::with_capacity(batch.orders.len());
        let mut messages: Vec<OutgoingMessage> = Vec::new();
        // One span per order, parented by the placing request's trace context (from the
        // dispatch row), open while its messages are produced: the order's trace shows the relay.
        let mut spans = Vec::with_capacity(batch.orders.len());
        for order in &batch.orders {
            let span =
                info_span!("dispatch_order", order_id = %order.order_id, otel.kind = "producer");
            TraceContext {
                traceparent: order.traceparent.clone(),
                tracestate: order.tracestate.clone(),
            }
            .set_as_parent_of(&span);
            // The records carry this span's context: the partner's consumer continues from the
            // dispatch (place → dispatch → partner), not from the placing request.
            let trace = span.in_scope(TraceContext::current);
            spans.push(span);
            // Partners that refused this order (REJECTED_BY_PARTNER) are skipped.
            let rejected = &order.rejected_partners;
            let plan = match batch.kind {
                BatchKind::Due => match table.route_excluding(&order.ship_to, rejected) {
                    None => Plan::Unroutable {
                        order,
                        no_routes: table.has_no_routes(),
                    },
                    Some(decision) => {
                        let payload = dispatched_order(
                            order,
                            &decision.partner.id,
                            order.resends + 1,
                            origin,
                        );
                        let partner_message = messages.len();
                        messages.push(
                            order_message(
                                order,
                                &payload,
                                decision.partner.topic.clone(),
                                false,
                                origin,
                            )
                            .in_trace(&trace),
                        );
                        let audit_message = self
                            .settings
                            .audit
                            .is_audited(&order.currency_code, order.total_minor)
                            .then(|| {
                                messages.push(
                                    order_message(
                                        order,
                                        &payload,
                                        self.settings.topics.audit.clone(),
                                        true,
                                        origin,
                                    )
                                    .in_trace(&trace),
                                );
                                messages.len() - 1
                            });
                        Plan::Send {
                            order,
                            partner: decision.partner.clone(),
                            route_id: decision.route.id.clone(),
                            partner_message,
                            audit_message,
                        }
                    }
                },
                BatchKind::Overdue => {
                    let partner = order.partner_id.as_deref().and_then(|id| table.partner(id));
                    match partner {
                        _ if order.acknowledged => Plan::Acknowledged(order),
                        Some(partner) if order.resends < partner.resend_budget => {
                            let payload =
                                dispatched_order(order, &partner.id, order.resends + 2, origin);
                            messages.push(
                                order_message(
                                    order,
                                    &payload,
                                    partner.topic.clone(),
                                    false,
                                    origin,
                                )
                                .in_trace(&trace),
                            );
                            Plan::Resend {
                                order,
                                partner: partner.clone(),
                                message: messages.len() - 1,
                            }
                        }
                        _ => Plan::Unacknowledged(order),
                    }
                }
            };
            plans.push(plan);
        }

        let outcomes = self.send(&messages).await;
        let failed = outcomes.iter().filter(|o| o.is_err()).count();
        if failed > 0 {
            // One line per batch; per order only the first failure of a run and the final one.
            let error = outcomes.iter().find_map(|o| o.as_ref().err());
            warn!(
                batch_id = %batch.fence.batch_id,
                failed,
                messages = messages.len(),
                error = %error.map(ToString::to_string).unwrap_or_default(),
                "sends failed in batch"
            );
        }
        let now = self.clock.now();
        let mut record = BatchRecord::default();
        for (plan, span) in plans.into_iter().zip(spans) {
            span.in_scope(|| {
                self.plan_outcome(plan, &messages, &outcomes, now, &mut record);
            });
        }
        Ok(record)
    }

    /// Produces `messages`; a message whose topic the broker does not know gets its topic
    /// created and one more try, so a broker without auto-creation (or one that lost its data)
    /// costs a batch a moment, not an attempt.
    async fn send(&self, messages: &[OutgoingMessage]) -> Vec<SendOutcome> {
        let mut outcomes = self.producer.send_all(messages).await;
        let missing: BTreeSet<&str> = messages
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| matches!(o, Err(e) if e.kind == SendErrorKind::UnknownTopic))
            .map(|(m, _)| m.topic.as_str())
            .collect();
        if missing.is_empty() {
            return outcomes;
        }
        let mut created = BTreeSet::new();
        for topic in missing {
            match self.topics.ensure_topic(topic).await {
                Ok(()) => {
                    info!(topic, "created a missing topic");
                    self.metrics.add_topics_created(1);
                    self.producer.refresh_topic(topic).await;
                    created.insert(topic);
                }
                Err(error) => warn!(%error, "cannot create a missing topic"),
            }
        }
        let again: Vec<usize> = (0..messages.len())
            .filter(|&i| created.contains(messages[i].topic.as_str()) && outcomes[i].is_err())
            .collect();
        let retried: Vec<OutgoingMessage> = again.iter().map(|&i| messages[i].clone()).collect();
        for (i, outcome) in again
            .into_iter()
            .zip(self.producer.send_all(&retried).await)
        {
            outcomes[i] = outcome;
        }
        outcomes
    }

    /// Creates every topic the relay produces to (audit, order events, each partner's), so a
    /// broker with auto-creation off, or one that lost its data, gets them back at start-up.
    /// A failure is logged: producing creates a topic it finds missing anyway.
    pub async fn ensure_topics(&self) {
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

    /// The attempt budget as the row's counter type.
    fn attempt_budget(&self) -> i32 {
        i32::try_from(self.settings.attempt_budget).unwrap_or(i32::MAX)
    }

    /// When to try again after the `failures`-th failure in a row (exponential, full jitter).
    fn retry_at(&self, failures: i32, now: DateTime<Utc>) -> DateTime<Utc> {
        let delay = self.settings.backoff.delay(
            u32::try_from(failures).unwrap_or(u32::MAX),
            &mut rand::rng(),
        );
        now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX)
    }

    /// What a failed send or re-send shares: the failure count goes up; the attempt log keeps
    /// only the first failure of a run and the last one (the row keeps the count and the latest
    /// error); the first failure is a warning, the ones in between debug lines. Returns when to
    /// try again, or `None` when the attempt budget is spent (the caller logs that outcome).
    fn failed_again(
        &self,
        order: &LeasedOrder,
        partner: &PartnerRecord,
        error: &str,
        what: &str,
        now: DateTime<Utc>,
        record: &mut BatchRecord,
    ) -> Option<DateTime<Utc>> {
        let failures = order.attempts.saturating_add(1);
        let spent = failures >= self.attempt_budget();
        if failures == 1 || spent {
            record
                .attempts
                .push(attempt_log(order, error, &partner.id, &partner.topic));
        }
        if spent {
            return None;
        }
        let next = self.retry_at(failures, now);
        let retry_in_ms = (next - now).num_milliseconds();
        if failures == 1 {
            warn!(order_id = %order.order_id, retry_in_ms, %error, "{what} failed, will retry");
        } else {
            debug!(order_id = %order.order_id, attempts = failures, retry_in_ms, %error, "{what} failed again, will retry");
        }
        Some(next)
    }

    fn plan_outcome(
        &self,
        plan: Plan<'_>,
        messages: &[OutgoingMessage],
        outcomes: &[SendOutcome],
        now: DateTime<Utc>,
        record: &mut BatchRecord,
    ) {
        let outcome = |index: usize| -> Result<(), String> {
            match outcomes.get(index) {
                Some(Ok(latency)) => {
                    self.metrics.record_latency(*latency);
                    Ok(())
                }
                Some(Err(error)) => Err(error.to_string()),
                None => Err("message was not produced".to_owned()),
            }
        };
        match plan {
            Plan::Unroutable { order, no_routes } => {
                let mut reason = if no_routes {
                    "no routes are set up: enroll partners and set routes (DispatchAdmin \
                     EnrollPartner, SetRoute), then RetryDispatches sends this order"
                        .to_owned()
                } else {
                    format!(
                        "no route matches country {:?}, region {:?}, postal code {:?}",
                        order.ship_to.country_code, order.ship_to.region, order.ship_to.postal_code
                    )
                };
                if !order.rejected_partners.is_empty() {
                    reason.push_str(&format!(
                        " (rejected by {}; their routes are skipped)",
                        order.rejected_partners.join(", ")
                    ));
                }
                warn!(order_id = %order.order_id, %reason, "order unroutable");
                self.metrics.add_unroutable(1);
                record.attempts.push(attempt_log(order, &reason, "", ""));
                record.updates.push(RowUpdate {
                    state: DispatchState::Unroutable,
                    last_error: Some(reason),
                    ..keep(order, now)
                });
            }
            Plan::Send {
                order,
                partner,
                route_id,
                partner_message,
                audit_message,
            } => match outcome(partner_message) {
                Ok(()) => {
                    debug!(order_id = %order.order_id, partner_id = %partner.id, "order sent");
                    self.metrics.add_sent(1);
                    // The audit copy's fate never decides the order's: a failed one waits in
                    // the audit outbox instead of holding back (and later re-sending) the
                    // partner's copy.
                    if let Some(index) = audit_message
                        && let Err(error) = outcome(index)
                        && let Some(message) = messages.get(index)
                    {
                        warn!(order_id = %order.order_id, %error, "audit copy failed, kept in the audit outbox");
                        self.metrics.add_audit_deferred(1);
                        record.audit_copies.push(AuditCopy {
                            order_id: order.order_id,
                            topic: message.topic.clone(),
                            payload: message.payload.clone(),
                            headers: message
                                .headers
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.clone()))
                                .collect(),
                            attempts: 1,
                            last_error: error,
                            due_at: self.retry_at(1, now),
                        });
                    }
                    record
                        .attempts
                        .push(attempt_log(order, "", &partner.id, &partner.topic));
                    record
                        .first_sends
                        .push((order.order_id, partner.id.clone()));
                    record.updates.push(RowUpdate {
                        state: DispatchState::Sent,
                        attempts: 0,
                        last_error: Some(String::new()),
                        partner_id: Some(partner.id.clone()),
                        route_id: Some(route_id),
                        sent_at: Some(now),
                        ack_due_at: Some(now + partner.handover_deadline),
                        ..keep(order, now)
                    });
                }
                Err(error) => {
                    let update = match self
                        .failed_again(order, &partner, &error, "send", now, record)
                    {
                        None => {
                            warn!(order_id = %order.order_id, attempts = order.attempts + 1, %error, "attempt budget spent, order dead");
                            self.metrics.add_dead(1);
                            RowUpdate {
                                state: DispatchState::Dead,
                                ..keep(order, now)
                            }
                        }
                        Some(next) => {
                            self.metrics.add_retries(1);
                            RowUpdate {
                                state: DispatchState::Retrying,
                                next_attempt_at: next,
                                ..keep(order, now)
                            }
                        }
                    };
                    record.updates.push(RowUpdate {
                        attempts: order.attempts.saturating_add(1),
                        last_error: Some(error),
                        partner_id: Some(partner.id.clone()),
                        route_id: Some(route_id),
                        ..update
                    });
                }
            },
            Plan::Acknowledged(order) => {
                self.metrics.add_acknowledged(1);
                record.updates.push(RowUpdate {
                    state: DispatchState::Acknowledged,
                    ack_due_at: None,
                    ..keep(order, now)
                });
            }
            Plan::Unacknowledged(order) => {
                let reason = format!(
                    "partner {} did not confirm receipt after {} sends",
                    order.partner_id.as_deref().unwrap_or("?"),
                    order.resends.saturating_add(1)
                );
                warn!(order_id = %order.order_id, %reason, "order unacknowledged");
                self.metrics.add_unacknowledged(1);
                record.updates.push(RowUpdate {
                    state: DispatchState::Unacknowledged,
                    last_error: Some(reason),
                    ack_due_at: None,
                    ..keep(order, now)
                });
            }
            Plan::Resend {
                order,
                partner,
                message,
            } => match outcome(message) {
                Ok(()) => {
                    info!(order_id = %order.order_id, partner_id = %partner.id, resends = order.resends + 1, "order re-sent after its handover deadline");
                    self.metrics.add_resent(1);
                    record
                        .attempts
                        .push(attempt_log(order, "", &partner.id, &partner.topic));
                    record.updates.push(RowUpdate {
                        state: DispatchState::Sent,
                        attempts: 0,
                        last_error: Some(String::new()),
                        resends: order.resends.saturating_add(1),
                        sent_at: Some(now),
                        ack_due_at: Some(now + partner.handover_deadline),
                        ..keep(order, now)
                    });
                }
                Err(error) => {
                    // Failed re-sends back off like first sends, within the same budget; the
                    // order stays SENT (the broker took it once) until the budget is spent.
                    self.metrics.add_resend_failures(1);
                    let failures = order.attempts.saturating_add(1);
                    let update = match self
                        .failed_again(order, &partner, &error, "re-send", now, record)
                    {
                        None => {
                            let reason = format!(
                                "partner {} did not confirm receipt and {failures} re-sends failed, the latest: {error}",
                                partner.id
                            );
                            warn!(order_id = %order.order_id, %reason, "order unacknowledged");
                            self.metrics.add_unacknowledged(1);
                            RowUpdate {
                                state: DispatchState::Unacknowledged,
                                last_error: Some(reason),
                                ack_due_at: None,
                                ..keep(order, now)
                            }
                        }
                        Some(next) => RowUpdate {
                            state: DispatchState::Sent,
                            last_error: Some(error),
                            ack_due_at: Some(next),
                            ..keep(order, now)
                        },
                    };
                    record.updates.push(RowUpdate {
                        attempts: failures,
                        ..update
                    });
                }
            },
        }
    }

    /// Records a batch's outcome, fenced by its lease. Rows whose lease was lost are left alone.
    pub async fn record(
        &self,
        batch: &LeasedBatch,
        record: &BatchRecord,
    ) -> Result<RecordReport, DispatchError> {
        if record.updates.is_empty() {
            return Ok(RecordReport::default());
        }
        let report = self
            .store
            .record(&batch.fence, record, self.clock.now())
            .await?;
        if !report.fenced.is_empty() {
            warn!(batch_id = %batch.fence.batch_id, fenced = report.fenced.len(), "lease lost before bookkeeping; another instance owns these orders now");
            self.metrics.add_fenced(report.fenced.len() as u64);
        }
        self.metrics.add_recorded(report.applied.len() as u64);
        Ok(report)
    }

    async fn process(&self, batch: LeasedBatch) -> Result<usize, DispatchError> {
        let leased = batch.orders.len();
        if leased > 0 {
            let record = self.dispatch(&batch).await?;
            self.record(&batch, &record).await?;
        }
        Ok(leased)
    }

    /// Due rows, then (if `with_overdue`) overdue rows: how many of each were leased.
    async fn dispatch_once(&self, with_overdue: bool) -> Result<(usize, usize), DispatchError> {
        let due = self.process(self.lease_due().await?).await?;
        let overdue = if with_overdue {
            self.process(self.lease_overdue().await?).await?
        } else {
            0
        };
        Ok((due, overdue))
    }

    /// One cycle: due rows, then (if `with_overdue`) overdue rows, then events.
    pub async fn run_once(&self, with_overdue: bool) -> Result<CycleReport, DispatchError> {
        let limit = self.settings.batch_size as usize;
        let (due, overdue) = self.dispatch_once(with_overdue).await?;
        let events = self.publish_events().await?;
        self.publish_audits().await?;
        Ok(CycleReport {
            due,
            overdue,
            events,
            full: due >= limit || overdue >= limit || events >= limit,
        })
    }

    /// Runs until `shutdown`, then gives up this instance's leases and flushes the producer.
    ///
    /// Loops run side by side: `batches_in_flight` dispatching loops (due rows, and overdue
    /// rows at most once per poll interval), each with its own lease, so that one batch is
    /// produced while another's outcome is recorded; and event publishing, so that a slow
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
        let (relay, scan) = (&self, &last_overdue_scan);
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
            let (due, overdue) = relay.dispatch_once(with_overdue).await?;
            Ok(due >= limit || overdue >= limit)
        };
        // Dispatching wakes for new outbox rows; publishing for any new history event.
        let dispatching =
            futures::future::join_all((0..self.settings.batches_in_flight.max(1)).map(|_| {
                self.drive(
                    "dispatch",
                    &shutdown,
                    grace,
                    |change| matches!(change, Change::Outbox),
                    dispatch_step,
                )
            }));
        let publishing = self.drive(
            "publish events",
            &shutdown,
            grace,
            |_| true,
            || async {
                let limit = self.settings.batch_size as usize;
                let events = self.publish_events().await?;
                let audits = self.publish_audits().await?;
                Ok(events >= limit || audits >= limit)
            },
        );
        // Topics are ensured alongside, not first: a slow admin API must not hold back orders
        // whose topics exist.
        tokio::join!(self.ensure_topics(), dispatching, publishing);
        self.stop().await;
    }

    /// Runs `step` until `shutdown`: again at once while it reports a full batch, otherwise
    /// after the next change notification or the poll interval, whichever comes first.
    async fn drive<F, Fut>(
        &self,
        name: &str,
        shutdown: &CancellationToken,
        grace: Duration,
        wake_on: fn(&Change) -> bool,
        mut step: F,
    ) where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool, DispatchError>>,
    {
        let mut wake = self.feed.subscribe();
        while !shutdown.is_cancelled() {
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
                () = wait_for_change(&mut wake, wake_on) => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
    }

    async fn stop(&self) {
        match self
            .store
            .release_leases(&self.settings.instance_id, self.clock.now())
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

/// Waits for a commit that may have made work for this loop.
async fn wait_for_change(wake: &mut broadcast::Receiver<Change>, wake_on: fn(&Change) -> bool) {
    loop {
        match wake.recv().await {
            Ok(change) if wake_on(&change) => return,
            Ok(_) => {}
            // Missed notifications may have been ours: look.
            Err(RecvError::Lagged(_)) => return,
            // The feed is gone (database closed): fall back to polling alone.
            Err(RecvError::Closed) => std::future::pending().await,
        }
    }
}

enum Plan<'a> {
    Unroutable {
        order: &'a LeasedOrder,
        /// No route is set up at all (the reason then says how to set them up).
        no_routes: bool,
    },
    Send {
        order: &'a LeasedOrder,
        partner: PartnerRecord,
        route_id: String,
        /// Index of the partner's copy in the batch's messages.
        partner_message: usize,
        /// Index of the audit copy, for orders at or above the audit threshold.
        audit_message: Option<usize>,
    },
    Acknowledged(&'a LeasedOrder),
    Unacknowledged(&'a LeasedOrder),
    Resend {
        order: &'a LeasedOrder,
        partner: PartnerRecord,
        message: usize,
    },
}

fn fence_of(request: &LeaseRequest) -> Fence {
    Fence {
        owner: request.owner.clone(),
        batch_id: request.batch_id,
    }
}

/// An update that leaves the row as it was leased (fields are then overridden).
fn keep(order: &LeasedOrder, now: DateTime<Utc>) -> RowUpdate {
    RowUpdate {
        order_id: order.order_id,
        state: order.state,
        attempts: order.attempts,
        next_attempt_at: now,
        last_error: None,
        partner_id: None,
        route_id: None,
        resends: order.resends,
        sent_at: None,
        ack_due_at: None,
    }
}

fn attempt_log(order: &LeasedOrder, error: &str, partner_id: &str, topic: &str) -> AttemptLog {
    AttemptLog {
        order_id: order.order_id,
        attempt: order
            .attempts
            .saturating_add(order.resends)
            .saturating_add(1),
        error: error.to_owned(),
        partner_id: partner_id.to_owned(),
        topic: topic.to_owned(),
    }
}
