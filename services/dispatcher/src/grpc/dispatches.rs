//! The dispatches and the relay: `ListDispatches`, `GetDispatch`, `RetryDispatches` (only
//! orders in a retryable state and not leased right now; a request naming orders that cannot
//! be done whole changes nothing; at most `max_orders`, the oldest first, due times spread over
//! `spread` — the replay move of `domain::cycle::replay`; `dry_run` answers and changes
//! nothing) and `GetRelayStats`.

use std::collections::HashSet;

use tracing::info;
use uuid::Uuid;
use waybill_proto::{time::to_timestamp, v1};
use waybill_service_kit::duration::format_duration;

use super::AdminApi;
use crate::{
    convert::{self, to_proto_duration},
    domain::{
        cycle::replay::{self, NotReplayable},
        model::DispatchFilter,
        request::{self, RetrySelection},
    },
    error::{Conflict, DispatchError, NotFound},
    store::RETRYABLE_STATES,
};

/// Default and largest `ListDispatches` page.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1_000;

impl AdminApi {
    pub(super) async fn dispatch_page(
        &self,
        request: v1::ListDispatchesRequest,
    ) -> Result<v1::ListDispatchesResponse, DispatchError> {
        let filter = request::filter(request.filter)?;
        let limit = match request.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let after = request::page_token(&request.page_token)?;
        let rows = self.store.list_dispatches(&filter, after, limit).await?;
        let next_page_token = match rows.last() {
            Some(last) if rows.len() == limit as usize => last.order_id.to_string(),
            _ => String::new(),
        };
        Ok(v1::ListDispatchesResponse {
            dispatches: rows
                .into_iter()
                .map(|row| convert::dispatch(row, Vec::new()))
                .collect(),
            next_page_token,
        })
    }

    pub(super) async fn dispatch(&self, order_id: &str) -> Result<v1::Dispatch, DispatchError> {
        let order_id = request::order_id("order_id", order_id)?;
        let (row, attempts) = self
            .store
            .get_dispatch(order_id)
            .await?
            .ok_or(NotFound::Dispatch(order_id))?;
        Ok(convert::dispatch(row, attempts))
    }

    pub(super) async fn retry(
        &self,
        caller: &str,
        request: v1::RetryDispatchesRequest,
    ) -> Result<v1::RetryDispatchesResponse, DispatchError> {
        let now = self.clock.now();
        let dry_run = request.dry_run;
        let bounds =
            request::replay_bounds(request.max_orders, request.spread, request.order_ids.len())?;
        let (ids, filter) = match request::retry_selection(request, &RETRYABLE_STATES)? {
            RetrySelection::Matching(filter) => (Vec::new(), filter),
            RetrySelection::Orders(ids) => {
                // Check everything first: a request that cannot be done whole changes nothing.
                for &order_id in &ids {
                    let Some((row, _)) = self.store.get_dispatch(order_id).await? else {
                        return Err(NotFound::Dispatch(order_id).into());
                    };
                    match replay::replayable(row.state, row.lease_expires_at, now) {
                        Ok(()) => {}
                        Err(NotReplayable::State(state)) => {
                            return Err(Conflict::NotRetryable { order_id, state }.into());
                        }
                        Err(NotReplayable::Leased(_)) => {
                            return Err(Conflict::Leased {
                                order_id,
                                owner: row.lease_owner.unwrap_or_default(),
                            }
                            .into());
                        }
                    }
                }
                (ids, DispatchFilter::default())
            }
        };
        let (candidates, matched) = self
            .store
            .replay_candidates(&ids, &filter, now, bounds.max_orders)
            .await?;
        let plan = replay::plan(&candidates, matched, &bounds, now);
        let rows = if dry_run {
            plan.rows
        } else {
            let done: HashSet<Uuid> = self
                .store
                .replay(&plan.rows, now)
                .await?
                .into_iter()
                .collect();
            plan.rows
                .into_iter()
                .filter(|row| done.contains(&row.order_id))
                .collect()
        };
        let order_ids: Vec<String> = rows.iter().map(|row| row.order_id.to_string()).collect();
        if !dry_run {
            info!(target: "waybill::audit", %caller, rpc = "RetryDispatches", count = rows.len(), matched = plan.matched, truncated = plan.truncated, spread = %format_duration(bounds.spread.to_std().unwrap_or_default()), order_ids = %order_ids.join(","), "dispatches retried");
        }
        Ok(v1::RetryDispatchesResponse {
            first_due_at: rows.first().map(|row| to_timestamp(row.next_attempt_at)),
            last_due_at: rows.last().map(|row| to_timestamp(row.next_attempt_at)),
            order_ids,
            applied: !dry_run,
            matched: plan.matched,
            truncated: plan.truncated,
            max_orders: i32::try_from(bounds.max_orders).unwrap_or(i32::MAX),
        })
    }

    pub(super) async fn stats(&self) -> Result<v1::RelayStats, DispatchError> {
        let now = self.clock.now();
        let backlog = self.store.backlog(now).await?;
        let metrics = self.metrics.snapshot();
        let producer = self.send_health.snapshot();
        let oldest = backlog
            .oldest_due_at
            .and_then(|at| (now - at).to_std().ok())
            .unwrap_or_default();
        Ok(v1::RelayStats {
            backlog: backlog
                .by_state
                .into_iter()
                .map(|(state, count)| v1::StateCount {
                    state: state.into(),
                    count,
                })
                .collect(),
            oldest_due_age: Some(to_proto_duration(oldest)),
            instance_id: self.instance_id.clone(),
            sent: metrics.sent,
            retries: metrics.retries,
            dead: metrics.dead,
            unroutable: metrics.unroutable,
            resent: metrics.resent,
            unacknowledged: metrics.unacknowledged,
            acknowledged: metrics.acknowledged,
            fenced: metrics.fenced,
            events_published: metrics.events_published,
            produce_latency_p50: Some(to_proto_duration(metrics.produce_latency_p50)),
            produce_latency_p99: Some(to_proto_duration(metrics.produce_latency_p99)),
            produce_latency_max: Some(to_proto_duration(metrics.produce_latency_max)),
            can_send: producer.can_send,
            failed_batches_in_a_row: producer.failed_batches_in_a_row,
            producer_rebuilds: producer.rebuilds,
            failed_sends: producer.failed_sends,
            last_send_error: producer.last_error.unwrap_or_default(),
            resend_failures: metrics.resend_failures,
            audit_pending: backlog.audit_pending,
            audit_deferred: metrics.audit_deferred,
            audits_published: metrics.audits_published,
            topics_created: metrics.topics_created,
        })
    }
}
