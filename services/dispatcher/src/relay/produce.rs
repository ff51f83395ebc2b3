//! The produce step of a cycle: plan each leased order (the decisions are in
//! [`crate::domain::cycle`]), build and produce the batch's messages, settle each order on its
//! outcome, and turn the outcomes into metrics and log lines. Writes nothing.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use tracing::{debug, info, info_span, warn};
use uuid::Uuid;
use waybill_service_kit::telemetry::{self, TraceContext};

use super::{LeasedBatch, Relay};
use crate::{
    domain::{
        cycle::{self, BatchKind, Outcome, Plan, Produced, handover::Progress},
        model::{LeasedOrder, SentPosition},
    },
    error::DispatchError,
    kafka::{
        messages::{Origin, OutgoingMessage, dispatched_payload, order_message},
        producer::{SendErrorKind, SendOutcome},
    },
    store::{AuditCopy, BatchRecord},
};

impl Relay {
    /// Routes and produces a batch; returns what must be recorded. Nothing is written here:
    /// the decisions are [`cycle::plan`] and [`cycle::settle`]; this step adds the spans, the
    /// messages, the produce call, and the metrics and logs of each outcome.
    pub async fn produce(&self, batch: &LeasedBatch) -> Result<BatchRecord, DispatchError> {
        if batch.orders().is_empty() {
            return Ok(BatchRecord::default());
        }
        let table = self
            .routing
            .table(batch.lease.routing_version, || self.store.routing_table())
            .await?;
        // Whether a partner that missed a deadline is behind or gone depends on its consumers.
        let progress = match batch.kind {
            BatchKind::Overdue => self.consumer_progress(batch.orders(), &table).await,
            BatchKind::Due => Progress::default(),
        };
        let planned_at = self.clock.now();
        let mut planned = Vec::with_capacity(batch.orders().len());
        let mut messages: Vec<OutgoingMessage> = Vec::new();
        for order in batch.orders() {
            let placed = TraceContext {
                traceparent: order.traceparent.clone(),
                tracestate: order.tracestate.clone(),
            };
            let (span, trace) = if telemetry::spans_exported() {
                // One span per order, parented by the placing request's trace context (from
                // the dispatch row), open while its messages are produced: the order's trace
                // shows the relay.
                let span = info_span!("dispatch_order", order_id = %order.order_id, otel.kind = "producer");
                placed.set_as_parent_of(&span);
                // The records carry this span's context: the partner's consumer continues from
                // the dispatch (place → dispatch → partner), not from the placing request.
                let trace = span.in_scope(TraceContext::current);
                (span, trace)
            } else {
                // Nothing would see the span: the records carry the placing request's context,
                // so the partner's consumer continues the order's trace all the same.
                (tracing::Span::none(), placed)
            };
            let plan = cycle::plan(
                order,
                batch.kind,
                &table,
                &self.settings.audit,
                &progress,
                planned_at,
            );
            let (partner_message, audit_message) =
                self.messages_for(order, &plan, &trace, &mut messages);
            planned.push(Planned {
                order,
                plan,
                span,
                partner_message,
                audit_message,
            });
        }

        let outcomes = self.send(&messages).await;
        let failed = outcomes.iter().filter(|o| o.is_err()).count();
        if failed > 0 {
            // One line per batch; per order only the first failure of a run and the final one.
            let error = outcomes.iter().find_map(|o| o.as_ref().err());
            warn!(
                batch_id = %batch.fence().batch_id,
                failed,
                messages = messages.len(),
                error = %error.map(ToString::to_string).unwrap_or_default(),
                "sends failed in batch"
            );
        }
        for delivered in outcomes.iter().filter_map(|o| o.as_ref().ok()) {
            self.metrics.record_latency(delivered.latency);
        }
        let outcome = |index: usize| -> Result<(), String> {
            match outcomes.get(index) {
                Some(Ok(_)) => Ok(()),
                Some(Err(error)) => Err(error.to_string()),
                None => Err("message was not produced".to_owned()),
            }
        };

        let now = self.clock.now();
        let policy = self.retry_policy();
        let mut rng = rand::rng();
        let mut record = BatchRecord::default();
        for planned in planned {
            if planned
                .partner_message
                .is_some_and(|index| matches!(outcomes.get(index), Some(Ok(_))))
            {
                self.settings.observer.produced(planned.order.order_id);
            }
            let produced = Produced {
                partner: planned.partner_message.map_or(Ok(()), outcome),
                audit: planned.audit_message.map(outcome),
                position: planned
                    .partner_message
                    .and_then(|index| outcomes.get(index)?.as_ref().ok())
                    .filter(|delivered| delivered.offset >= 0)
                    .map(|delivered| SentPosition {
                        partition: delivered.partition,
                        offset: delivered.offset,
                    }),
            };
            let settled = cycle::settle(
                planned.order,
                &planned.plan,
                &produced,
                now,
                &policy,
                &mut rng,
            );
            planned
                .span
                .in_scope(|| self.observe(planned.order.order_id, &settled.outcome));
            // A failed audit copy waits in the audit outbox, ready to produce.
            if let (
                Some(due_at),
                Outcome::Sent {
                    audit_deferred: Some(error),
                    ..
                },
                Some(message),
            ) = (
                settled.audit_retry_at,
                &settled.outcome,
                planned.audit_message.and_then(|i| messages.get(i)),
            ) {
                record.audit_copies.push(AuditCopy {
                    order_id: planned.order.order_id,
                    topic: message.topic.clone(),
                    payload: message.payload.clone(),
                    headers: message
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect(),
                    attempts: 1,
                    last_error: error.clone(),
                    due_at,
                });
            }
            record.updates.push(settled.update);
            record.attempts.extend(settled.attempt);
            record.first_sends.extend(settled.first_send);
        }
        Ok(record)
    }

    /// Appends the messages `plan` needs to `messages`: the indexes of the partner's copy and
    /// of the audit copy.
    fn messages_for(
        &self,
        order: &LeasedOrder,
        plan: &Plan,
        trace: &TraceContext,
        messages: &mut Vec<OutgoingMessage>,
    ) -> (Option<usize>, Option<usize>) {
        let origin = Origin {
            region: &self.settings.region,
            reply_to: &self.settings.reply_to,
        };
        // The send number the partner sees: first sends (and their retries) are resends + 1.
        let (partner, send_number, audited) = match plan {
            Plan::Send {
                partner, audited, ..
            } => (partner, order.resends + 1, *audited),
            Plan::Resend { partner } => (partner, order.resends + 2, false),
            Plan::Unroutable { .. }
            | Plan::Acknowledged
            | Plan::Unacknowledged
            | Plan::Behind { .. }
            | Plan::BehindTooLong { .. } => {
                return (None, None);
            }
        };
        let payload = dispatched_payload(order, &partner.id, send_number, origin);
        let audit_payload = audited.then(|| payload.clone());
        messages.push(
            order_message(order, payload, partner.topic.clone(), false, origin).in_trace(trace),
        );
        let partner_message = messages.len() - 1;
        let audit_message = audit_payload.map(|payload| {
            messages.push(
                order_message(
                    order,
                    payload,
                    self.settings.topics.audit.clone(),
                    true,
                    origin,
                )
                .in_trace(trace),
            );
            messages.len() - 1
        });
        (Some(partner_message), audit_message)
    }

    /// The metrics and log lines of one order's outcome.
    fn observe(&self, order_id: Uuid, outcome: &Outcome) {
        match outcome {
            Outcome::Unroutable { reason } => {
                warn!(%order_id, %reason, "order unroutable");
                self.metrics.add_unroutable(1);
            }
            Outcome::Sent {
                partner_id,
                audit_deferred,
            } => {
                debug!(%order_id, %partner_id, "order sent");
                self.metrics.add_sent(1);
                // The audit copy's fate never decides the order's: a failed one waits in the
                // audit outbox instead of holding back (and later re-sending) the partner's copy.
                if let Some(error) = audit_deferred {
                    warn!(%order_id, %error, "audit copy failed, kept in the audit outbox");
                    self.metrics.add_audit_deferred(1);
                }
            }
            Outcome::Retrying {
                failures,
                retry_at,
                error,
            } => {
                self.metrics.add_retries(1);
                self.failed_again(order_id, "send", *failures, *retry_at, error);
            }
            Outcome::Dead { failures, error } => {
                warn!(%order_id, attempts = failures, %error, "attempt budget spent, order dead");
                self.metrics.add_dead(1);
            }
            Outcome::Acknowledged => self.metrics.add_acknowledged(1),
            Outcome::Unacknowledged {
                reason,
                after_failed_resend,
            } => {
                if *after_failed_resend {
                    self.metrics.add_resend_failures(1);
                }
                warn!(%order_id, %reason, "order unacknowledged");
                self.metrics.add_unacknowledged(1);
            }
            Outcome::HandoverExtended {
                partner_id,
                ahead,
                due,
            } => {
                debug!(%order_id, %partner_id, ahead, %due, "partner behind, handover deadline moved on without a re-send");
                self.metrics.add_handover_extended(1);
            }
            Outcome::Resent {
                partner_id,
                resends,
            } => {
                info!(%order_id, %partner_id, resends, "order re-sent after its handover deadline");
                self.metrics.add_resent(1);
            }
            Outcome::ResendRetrying {
                failures,
                retry_at,
                error,
            } => {
                self.metrics.add_resend_failures(1);
                self.failed_again(order_id, "re-send", *failures, *retry_at, error);
            }
        }
    }

    /// A failure that will be retried: the first of a run is a warning, the ones after it
    /// debug lines (the batch's warning already counts them).
    fn failed_again(
        &self,
        order_id: Uuid,
        what: &str,
        failures: i32,
        retry_at: DateTime<Utc>,
        error: &str,
    ) {
        let retry_in_ms = (retry_at - self.clock.now()).num_milliseconds();
        if failures == 1 {
            warn!(%order_id, retry_in_ms, %error, "{what} failed, will retry");
        } else {
            debug!(%order_id, attempts = failures, retry_in_ms, %error, "{what} failed again, will retry");
        }
    }

    /// Produces `messages`; a message whose topic the broker does not know gets its topic
    /// created and one more try, so a broker without auto-creation (or one that lost its data)
    /// costs a batch a moment, not an attempt.
    pub(super) async fn send(&self, messages: &[OutgoingMessage]) -> Vec<SendOutcome> {
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
}

/// One order of a batch between planning and settling.
struct Planned<'a> {
    order: &'a LeasedOrder,
    plan: Plan,
    span: tracing::Span,
    /// Index of the partner's copy in the batch's messages.
    partner_message: Option<usize>,
    /// Index of the audit copy.
    audit_message: Option<usize>,
}
