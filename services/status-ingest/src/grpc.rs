//! `waybill.v1.StatusIngest`: the checks of `ReportStatus`, in order, each refusal changing
//! nothing:
//!
//! 0. the request's fields are well-formed (`INVALID_ARGUMENT` naming the field);
//! 1. the token is well-formed, of our type and algorithm, and its `kid`, `iss` and `jti` are
//!    bounded and free of control characters (`UNAUTHENTICATED` from here to 4);
//! 2. its key `(iss, kid)` is enrolled and not revoked (a key seen before is remembered, and
//!    checked again in the report's transaction: [`crate::keys`]);
//! 3. its signature verifies (strict Ed25519);
//! 4. audience, expiry, issue time not in the future beyond the skew, lifetime; then every bound
//!    claim equals the request field — every field the partner says: partner, order, report id,
//!    status, tracking id, detail, detail code, action required and occurred-at;
//! 5. the order exists and is routed to that partner (`PERMISSION_DENIED`, one answer whether
//!    the order does not exist or is another partner's), the token id is new (replay:
//!    `UNAUTHENTICATED`), and the report id is new (else `duplicate = true`) — these in the
//!    store's transaction, which also carries out the effects (a batch with the reports of
//!    other calls, committed before any of them is answered: see [`crate::store`]).
//!
//! Every text that reaches a query has passed its rule first — the request's fields in step 0,
//! the token's `kid`, `iss` (the key lookup) and `jti` (the replay guard) in step 1 — so a NUL,
//! which Postgres cannot hold in `text` while SQLite would, is refused the same way on both
//! backends and never surfaces as `INTERNAL`.
//!
//! A report that overtakes the relay's bookkeeping of its order's send (the partner consumed,
//! answered and reported before the relay's batch recorded the send: the batch holds the order
//! right now) waits for that batch's commit, told by the database's change feed, for at most
//! [`RELAY_WAIT`], and is then recorded: a wake-up instead of sending the partner away to sign
//! a fresh token and call again. Past the wait (a batch held up by a slow broker, or a relay in
//! another process on SQLite, which has no cross-process notifications) it is answered
//! `UNAVAILABLE` with a retry hint, as before.
//!
//! Refusals are counted by reason and logged with partner, order and reason — never the token.
//!
//! `ReportStatuses` takes up to [`MAX_BATCH_REPORTS`] reports in one call and runs each through
//! exactly the path above, on a task and in a span of its own (its order's trace, from the
//! item's `traceparent`), answering each alone in the request's order: a refusal of one report
//! changes nothing for the others, and the reports of one call share the store's group commit
//! as concurrent calls do. The call itself is refused, recording nothing, when it carries no
//! report or too many, or more than the caller's rate allows (a batch counts each report).

use std::{sync::Arc, time::Duration, time::Instant};

use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span, debug, warn};
use waybill_proto::{
    headers::RETRY_AFTER_MS,
    v1::{self as pb, status_ingest_server::StatusIngest},
};
use waybill_service_kit::{
    clock::SharedClock,
    db::{Change, ChangeFeed},
    security::rate_limit::RateCharge,
    telemetry::TraceContext,
    text::{InvalidField, quote},
};
use waybill_token::{
    EnrolledKey, KeyRefusal, MAX_SKEW_SECONDS, RejectReason, TokenError, VerifiedReport,
    verify_report,
};

use crate::{
    domain::validate,
    error::IngestError,
    keys::KeyCache,
    metrics::IngestMetrics,
    store::{AuthenticatedReport, IngestStore, ReportOutcome},
};

/// How long a report that overtook the relay's bookkeeping waits for the relay's commit. A relay
/// batch records its sends milliseconds after the broker acknowledged them; one that takes
/// longer is waiting for a slow broker, and the partner is better told to come back.
pub const RELAY_WAIT: Duration = Duration::from_millis(200);

pub use waybill_proto::limits::MAX_BATCH_REPORTS;

/// The StatusIngest gRPC service.
#[derive(Debug, Clone)]
pub struct IngestApi {
    store: Arc<dyn IngestStore>,
    clock: SharedClock,
    /// Shared: every report clones the service onto a task of its own.
    audience: Arc<str>,
    metrics: Arc<IngestMetrics>,
    keys: Arc<KeyCache>,
    relay_commits: Option<ChangeFeed>,
}

impl IngestApi {
    /// The service over `store`, accepting tokens whose audience is `audience`.
    pub fn new(
        store: Arc<dyn IngestStore>,
        clock: SharedClock,
        audience: impl Into<Arc<str>>,
        metrics: Arc<IngestMetrics>,
    ) -> Self {
        Self {
            store,
            clock,
            audience: audience.into(),
            metrics,
            keys: Arc::default(),
            relay_commits: None,
        }
    }

    /// Reports that overtook the relay's bookkeeping wait for its commit on `feed` (see the
    /// module's documentation); without one they are answered `UNAVAILABLE` at once.
    #[must_use]
    pub fn waiting_for_relay_on(mut self, feed: Option<ChangeFeed>) -> Self {
        self.relay_commits = feed;
        self
    }

    /// Records `report`, waiting for the relay's commit when the report overtook it.
    async fn record(&self, report: &AuthenticatedReport) -> Result<ReportOutcome, IngestError> {
        let outcome = self.store.record_report(report).await?;
        let (ReportOutcome::InFlight, Some(feed)) = (&outcome, &self.relay_commits) else {
            return Ok(outcome);
        };
        self.metrics.add_waited_for_relay();
        // Subscribed first, then recorded again: a commit between the two is not missed. A
        // refused attempt changes nothing (its token id is not spent), so it can be repeated.
        let mut commits = feed.subscribe();
        let deadline = tokio::time::Instant::now() + RELAY_WAIT;
        loop {
            let outcome = self.store.record_report(report).await?;
            if !matches!(outcome, ReportOutcome::InFlight) {
                return Ok(outcome);
            }
            loop {
                match tokio::time::timeout_at(deadline, commits.recv()).await {
                    Err(_) | Ok(Err(RecvError::Closed)) => return Ok(outcome),
                    Ok(Ok(Change::OrderStatus(order))) if order == report.order_id => break,
                    // Fallen behind the feed: whatever it was, look again.
                    Ok(Err(RecvError::Lagged(_))) => break,
                    Ok(Ok(_)) => {}
                }
            }
        }
    }

    /// Every check and the effects; `Ok(true)` for a duplicate.
    async fn report(&self, request: &pb::ReportStatusRequest) -> Result<bool, IngestError> {
        let fields = validate::report_fields(request)?;
        let bound = fields.bound_report(request);
        let now = self.clock.now();
        let VerifiedReport {
            claims,
            key_id,
            key,
        } = verify_report(
            &request.token,
            &self.audience,
            now,
            |partner_id, key_id| self.enrolled_key(partner_id, key_id),
            &bound,
        )
        .await?;
        self.keys.remember(&claims.iss, &key_id, key);
        let kept_until =
            chrono::DateTime::from_timestamp(claims.exp.saturating_add(MAX_SKEW_SECONDS), 0)
                .unwrap_or(now);

        let report = AuthenticatedReport {
            order_id: fields.order_id,
            partner_id: fields.partner_id,
            report_id: fields.report_id,
            status: fields.status,
            tracking_id: fields.tracking_id,
            detail: fields.detail,
            detail_code: fields.detail_code,
            action_required: fields.action_required,
            occurred_at: fields.occurred_at,
            token_id: claims.jti,
            token_id_kept_until: kept_until,
            key_id,
        };
        match self.record(&report).await? {
            ReportOutcome::Accepted {
                sequence,
                effects,
                placed_to_acknowledged,
            } => {
                self.metrics.add_accepted(effects.needs_review);
                if let Some(after) = placed_to_acknowledged {
                    self.metrics
                        .observe_acknowledged(&report.partner_id, after);
                }
                if effects.needs_review {
                    warn!(partner_id = %report.partner_id, order_id = %report.order_id, status = report.status.short_name(), sequence, "report after a final state kept and flagged for review");
                } else {
                    // Per report: debug, like the relay's "order sent" (a report is routine).
                    debug!(partner_id = %report.partner_id, order_id = %report.order_id, status = report.status.short_name(), sequence, acknowledged = effects.acknowledge, rerouted = effects.reroute, "report accepted");
                }
                Ok(false)
            }
            ReportOutcome::Duplicate => {
                self.metrics.add_duplicate();
                debug!(partner_id = %report.partner_id, order_id = %report.order_id, report_id = %report.report_id, "duplicate report, nothing changed");
                Ok(true)
            }
            ReportOutcome::NotRouted => Err(IngestError::NotRouted),
            ReportOutcome::InFlight => Err(IngestError::InFlight),
            ReportOutcome::Replayed => Err(TokenError::new(
                RejectReason::Replayed,
                "this token (its jti) was used before; sign a fresh token for every attempt",
            )
            .into()),
            ReportOutcome::KeyRevoked(revoked_at) => {
                // Revoked since this instance remembered it.
                self.keys.forget(&report.partner_id, &report.key_id);
                let why = revoked_at.map_or(KeyRefusal::Unknown, KeyRefusal::Revoked);
                Err(why.error(&report.partner_id, &report.key_id).into())
            }
            ReportOutcome::ReportIdReused => Err(InvalidField::new(
                "report_id",
                format!(
                    "{} was already used by your partner id for another order; report ids are unique per partner",
                    quote(&report.report_id)
                ),
            )
            .into()),
        }
    }
}

impl IngestApi {
    /// What is enrolled as key `key_id` of `partner_id`: from memory (a key that verified a
    /// token before) or from the store.
    async fn enrolled_key(
        &self,
        partner_id: String,
        key_id: String,
    ) -> Result<EnrolledKey, IngestError> {
        if let Some(key) = self.keys.get(&partner_id, &key_id) {
            return Ok(EnrolledKey::Current(key));
        }
        Ok(match self.store.partner_key(&partner_id, &key_id).await? {
            Some(key) => EnrolledKey::stored(&key.public_key, key.revoked_at),
            None => EnrolledKey::Refused(KeyRefusal::Unknown),
        })
    }

    /// [`IngestApi::report`], with a refusal counted by reason and logged.
    async fn report_counted(
        &self,
        request: &pb::ReportStatusRequest,
    ) -> Result<pb::ReportStatusResponse, IngestError> {
        let started = Instant::now();
        match self.report(request).await {
            Ok(duplicate) => Ok(pb::ReportStatusResponse { duplicate }),
            Err(error) => {
                let reason = error.reason();
                self.metrics.add_rejected(reason);
                // Partner and order as the request gave them (quoted, bounded); never the token.
                warn!(
                    partner_id = %quote(&request.partner_id),
                    order_id = %quote(&request.correlation_id),
                    reason,
                    error = %error,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "report refused"
                );
                Err(error)
            }
        }
    }

    /// One report of a `ReportStatuses` call, on a task of its own (to completion, as
    /// `ReportStatus`) in a span continuing its order's trace, answered as `ReportStatus` would.
    fn report_batched(&self, item: pb::BatchedReport) -> tokio::task::JoinHandle<pb::ReportResult> {
        let span = tracing::info_span!(
            "report",
            otel.kind = "server",
            rpc.method = "/waybill.v1.StatusIngest/ReportStatuses",
        );
        TraceContext {
            traceparent: item.traceparent,
            tracestate: item.tracestate,
        }
        .set_as_parent_of(&span);
        let (api, request) = (self.clone(), item.report.unwrap_or_default());
        tokio::spawn(
            async move {
                match api.report_counted(&request).await {
                    Ok(answer) => pb::ReportResult {
                        duplicate: answer.duplicate,
                        ..pb::ReportResult::default()
                    },
                    Err(error) => result_of(&Status::from(error)),
                }
            }
            .instrument(span),
        )
    }

    fn stats(&self) -> pb::ReportStats {
        let stats = self.metrics.snapshot();
        pb::ReportStats {
            accepted: stats.accepted,
            duplicates: stats.duplicates,
            flagged_for_review: stats.flagged_for_review,
            rejected: stats.rejected.into_iter().collect(),
        }
    }
}

/// Each RPC is one line: the inner method's [`IngestError`] becomes a `Status` in one place
/// (`From<IngestError> for Status`).
#[tonic::async_trait]
impl StatusIngest for IngestApi {
    async fn report_status(
        &self,
        request: Request<pb::ReportStatusRequest>,
    ) -> Result<Response<pb::ReportStatusResponse>, Status> {
        // To completion even if the caller goes away (a partner killed mid-call, a client
        // deadline): a report it queued may commit, and then it is counted (accepted, its
        // placed → acknowledged latency) like any other. Cancelled with the call, the commit
        // went uncounted and the partner's re-send counted as a duplicate only.
        let (api, request) = (self.clone(), request.into_inner());
        let answer = tokio::spawn(
            async move { api.report_counted(&request).await }.instrument(Span::current()),
        )
        .await
        .map_err(|_| Status::unavailable("the report's task ended early; send it again"))??;
        Ok(Response::new(answer))
    }

    async fn report_statuses(
        &self,
        request: Request<pb::ReportStatusesRequest>,
    ) -> Result<Response<pb::ReportStatusesResponse>, Status> {
        let charge = request.extensions().get::<RateCharge>().cloned();
        let reports = request.into_inner().reports;
        if reports.is_empty() {
            return Err(Status::invalid_argument(
                "reports: a ReportStatuses call carries at least one report",
            ));
        }
        if reports.len() > MAX_BATCH_REPORTS {
            return Err(Status::invalid_argument(format!(
                "reports: {} reports in one call; at most {MAX_BATCH_REPORTS}",
                reports.len()
            )));
        }
        // The door took one report's worth of the caller's rate; the rest now, before any
        // report is looked at.
        if let Some(charge) = charge {
            charge.take(reports.len() - 1)?;
        }
        let tasks: Vec<_> = reports
            .into_iter()
            .map(|item| self.report_batched(item))
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(task.await.unwrap_or_else(|_| {
                result_of(&Status::unavailable(
                    "the report's task ended early; send it again",
                ))
            }));
        }
        Ok(Response::new(pb::ReportStatusesResponse { results }))
    }

    async fn get_report_stats(
        &self,
        _request: Request<pb::GetReportStatsRequest>,
    ) -> Result<Response<pb::ReportStats>, Status> {
        Ok(Response::new(self.stats()))
    }
}

/// A report's refusal as a `ReportStatuses` result: the code, the message and the retry delay
/// asked for, as `ReportStatus` answers them in its status and trailers.
pub fn result_of(status: &Status) -> pb::ReportResult {
    let retry_after_ms = status
        .metadata()
        .get(RETRY_AFTER_MS)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    pb::ReportResult {
        code: status.code() as i32,
        message: status.message().to_owned(),
        duplicate: false,
        retry_after_ms,
    }
}
