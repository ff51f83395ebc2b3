//! The dispatches and the relay: `ListDispatches`, `GetDispatch`, `RetryDispatches` (only
//! orders in a retryable state and not leased right now; a request that cannot be done whole
//! changes nothing) and `GetRelayStats`.

use tracing::info;
use uuid::Uuid;
use waybill_proto::v1;

use super::AdminApi;
use crate::{
    convert::{self, to_proto_duration},
    domain::{
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
        let retried = match request::retry_selection(request, &RETRYABLE_STATES)? {
            RetrySelection::Matching(filter) => self.store.retry(&[], &filter, now).await?,
            RetrySelection::Orders(ids) => {
                // Check everything first: a request that cannot be done whole changes nothing.
                for &order_id in &ids {
                    let Some((row, _)) = self.store.get_dispatch(order_id).await? else {
                        return Err(NotFound::Dispatch(order_id).into());
                    };
                    if !RETRYABLE_STATES.contains(&row.state) {
                        return Err(Conflict::NotRetryable {
                            order_id,
                            state: row.state,
                        }
                        .into());
                    }
                    if row.lease_expires_at.is_some_and(|until| until > now) {
                        return Err(Conflict::Leased {
                            order_id,
                            owner: row.lease_owner.unwrap_or_default(),
                        }
                        .into());
                    }
                }
                self.store
                    .retry(&ids, &DispatchFilter::default(), now)
                    .await?
            }
        };
        let order_ids: Vec<String> = retried.iter().map(Uuid::to_string).collect();
        info!(target: "waybill::audit", %caller, rpc = "RetryDispatches", count = retried.len(), order_ids = %order_ids.join(","), "dispatches retried");
        Ok(v1::RetryDispatchesResponse { order_ids })
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
