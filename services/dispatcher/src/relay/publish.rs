//! The relay's side loop: history events to the order-events topic, and audit copies from the
//! audit outbox to the audit topic. Neither ever holds back an order on its way to a partner.

use std::{sync::atomic::Ordering, time::Duration};

use tracing::{info, warn};

use super::{Published, Relay};
use crate::{
    domain::model::UnpublishedEvent,
    error::DispatchError,
    kafka::messages::{Origin, OutgoingMessage, order_event_message},
    store::AuditCopy,
};

/// How long the publisher waits before looking again when committed events are held back by
/// an older transaction still running (Postgres; see migration 0006).
const HELD_BACK_PAUSE: Duration = Duration::from_millis(10);

/// Walks one claim of events makes after its first, each read while the previous one is being
/// produced. The claim's transaction stays open (and the cursor row locked) until the last is
/// acknowledged, so this bounds both that time and what is published twice after a crash.
const WALKS_PER_CLAIM: usize = 8;

impl Relay {
    /// Publishes unpublished history events to the order-events topic.
    ///
    /// Pipelined: while one walk's events are produced, the next walk is read under the same
    /// claim (Postgres), for as long as walks come back full. The cursor moves past every walk
    /// the broker acknowledged; a walk that failed, and the one read meanwhile, are published
    /// again by the next claim.
    ///
    /// Given up after one lease's length (see the module's notes on bounds).
    pub async fn publish_events(&self) -> Result<Published, DispatchError> {
        self.bounded("publishing history events", self.publish_claimed_events())
            .await
    }

    async fn publish_claimed_events(&self) -> Result<Published, DispatchError> {
        let limit = self.settings.event_batch_size;
        let mut batch = self.store.claim_events(limit).await?;
        let mut messages = self.event_messages(batch.events());
        if messages.is_empty() {
            let more = batch.more_waiting();
            // The walk may still have moved past events published by other means.
            batch.mark_published(self.clock.now()).await?;
            if more {
                // Committed events wait for an older transaction to end; that is usually a
                // moment. (Paused after the batch settled: an open batch would itself hold
                // the others back.)
                tokio::time::sleep(HELD_BACK_PAUSE).await;
            }
            return Ok(Published { events: 0, more });
        }
        let mut full = messages.len() >= limit as usize;
        // Which walk `messages` came from: 0 is the claim's own, then each `walk_more`.
        let mut walk = 0;
        let mut published = 0;
        loop {
            let read_next = full && walk < WALKS_PER_CLAIM;
            let (outcomes, next) = tokio::join!(self.send(&messages), async {
                if read_next {
                    batch.walk_more(limit).await.map(Some)
                } else {
                    Ok(None)
                }
            });
            if let Some(error) = outcomes.iter().find_map(|r| r.as_ref().err()) {
                // Logged once per outage, not once per cycle.
                if !self.events_failing.swap(true, Ordering::Relaxed) {
                    warn!(%error, events = messages.len(), "publishing order events failed, will retry");
                }
                if walk == 0 {
                    // Released, every event stays unpublished: they go out again next cycle.
                    batch.release().await?;
                    return Ok(Published::default());
                }
                // The walks acknowledged before this one stay published.
                batch.keep_walks(walk - 1);
                full = false;
                break;
            }
            published += messages.len();
            match next? {
                Some(events) if !events.is_empty() => {
                    walk += 1;
                    full = events.len() >= limit as usize;
                    messages = self.event_messages(&events);
                }
                _ => break,
            }
        }
        if published > 0 && self.events_failing.swap(false, Ordering::Relaxed) {
            info!("publishing order events works again");
        }
        let more = full || batch.more_waiting();
        batch.mark_published(self.clock.now()).await?;
        self.metrics.add_events_published(published as u64);
        Ok(Published {
            events: published,
            more,
        })
    }

    /// The order-events topic's messages for `events`.
    fn event_messages(&self, events: &[UnpublishedEvent]) -> Vec<OutgoingMessage> {
        let origin = Origin {
            region: &self.settings.region,
            reply_to: &self.settings.reply_to,
        };
        events
            .iter()
            .map(|event| {
                order_event_message(event, self.settings.topics.order_events.clone(), origin)
            })
            .collect()
    }

    /// Produces the audit copies that are due from the audit outbox; how many were claimed.
    /// A copy that fails again backs off (exponentially, capped) and is never given up: the
    /// audit topic must get every copy.
    ///
    /// Given up after one lease's length (see the module's notes on bounds).
    pub async fn publish_audits(&self) -> Result<usize, DispatchError> {
        self.bounded("publishing audit copies", self.publish_claimed_audits())
            .await
    }

    async fn publish_claimed_audits(&self) -> Result<usize, DispatchError> {
        let now = self.clock.now();
        let batch = self
            .store
            .claim_audits(now, self.settings.batch_size)
            .await?;
        let copies = batch.copies();
        if copies.is_empty() {
            return Ok(0);
        }
        let messages: Vec<OutgoingMessage> = copies
            .iter()
            .map(|copy| OutgoingMessage {
                topic: copy.topic.clone(),
                key: copy.order_id.to_string(),
                payload: copy.payload.clone(),
                headers: copy
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone().into(), v.clone()))
                    .collect(),
            })
            .collect();
        let outcomes = self.send(&messages).await;
        let now = self.clock.now();
        let mut delivered = Vec::new();
        let mut failed = Vec::new();
        for (copy, outcome) in copies.iter().zip(&outcomes) {
            match outcome {
                Ok(_) => delivered.push(copy.order_id),
                Err(error) => {
                    let attempts = copy.attempts.saturating_add(1);
                    failed.push(AuditCopy {
                        attempts,
                        last_error: error.to_string(),
                        due_at: self.retry_at(attempts, now),
                        ..copy.clone()
                    });
                }
            }
        }
        let claimed = copies.len();
        if let Some(copy) = failed.first() {
            warn!(failed = failed.len(), error = %copy.last_error, "audit copies failed again, will retry");
        }
        self.metrics.add_audits_published(delivered.len() as u64);
        batch.settle(&delivered, &failed).await?;
        Ok(claimed)
    }
}
