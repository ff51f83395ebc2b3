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
//! Refusals are counted by reason and logged with partner, order and reason — never the token.

use std::{sync::Arc, time::Instant};

use tonic::{Request, Response, Status};
use tracing::{debug, warn};
use waybill_proto::v1::{self as pb, status_ingest_server::StatusIngest};
use waybill_service_kit::{
    clock::SharedClock,
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

/// The StatusIngest gRPC service.
#[derive(Debug, Clone)]
pub struct IngestApi {
    store: Arc<dyn IngestStore>,
    clock: SharedClock,
    audience: String,
    metrics: Arc<IngestMetrics>,
    keys: Arc<KeyCache>,
}

impl IngestApi {
    /// The service over `store`, accepting tokens whose audience is `audience`.
    pub fn new(
        store: Arc<dyn IngestStore>,
        clock: SharedClock,
        audience: impl Into<String>,
        metrics: Arc<IngestMetrics>,
    ) -> Self {
        Self {
            store,
            clock,
            audience: audience.into(),
            metrics,
            keys: Arc::default(),
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
        match self.store.record_report(&report).await? {
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
        Ok(Response::new(self.report_counted(request.get_ref()).await?))
    }

    async fn get_report_stats(
        &self,
        _request: Request<pb::GetReportStatsRequest>,
    ) -> Result<Response<pb::ReportStats>, Status> {
        Ok(Response::new(self.stats()))
    }
}
