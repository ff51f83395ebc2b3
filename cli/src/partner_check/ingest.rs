//! A fake StatusIngest (`waybill.v1.StatusIngest/ReportStatus` and `ReportStatuses`) for one region: it checks every
//! request and token as the real one does (`waybill_status_ingest`'s field rules,
//! [`waybill_token::verify_report`] against the keys the kit enrolled, revocation included),
//! answers with the real codes and messages (`waybill_status_ingest::error`), keeps report ids
//! and token ids like the real store, records every call, and can be switched per scenario:
//! unavailable, slow, a clock shifted, every report on one order refused as replayed, the next
//! call held in flight (so the kit can kill the adapter there).

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use waybill_proto::v1::{
    self as pb,
    status_ingest_server::{StatusIngest, StatusIngestServer},
};
use waybill_service_kit::{grpc::ServerLimits, text::InvalidField};
use waybill_status_ingest::{domain::validate, error::IngestError, grpc::result_of};
use waybill_token::{EnrolledKey, KeyRefusal, RejectReason, TokenError, VerifyingKey};

/// The message of a refusal for an unavailable store, as the real one words it.
const UNAVAILABLE_MESSAGE: &str = "storage is unavailable, retry later with a fresh token";

/// An enrolled key and when it was revoked.
type Enrolled = (VerifyingKey, Option<DateTime<Utc>>);

/// The partner's keys as enrolled: shared by both regions.
#[derive(Default)]
pub struct Keys {
    keys: Mutex<HashMap<String, Enrolled>>,
}

impl Keys {
    /// Enrols `key` under `key_id`.
    pub fn enrol(&self, key_id: &str, key: VerifyingKey) {
        lock(&self.keys).insert(key_id.to_owned(), (key, None));
    }

    /// Forgets every key (a new scenario).
    pub fn clear(&self) {
        lock(&self.keys).clear();
    }

    /// Revokes `key_id` now.
    pub fn revoke(&self, key_id: &str) {
        if let Some(entry) = lock(&self.keys).get_mut(key_id) {
            entry.1 = Some(Utc::now());
        }
    }

    fn lookup(&self, key_id: &str) -> EnrolledKey {
        match lock(&self.keys).get(key_id) {
            Some((_, Some(at))) => EnrolledKey::Refused(KeyRefusal::Revoked(*at)),
            Some((key, None)) => EnrolledKey::Current(*key),
            None => EnrolledKey::Refused(KeyRefusal::Unknown),
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded (`duplicate: false`).
    Accepted,
    /// This report id was accepted before (`duplicate: true`); `changed` when this copy says
    /// something else than the kept one.
    Duplicate {
        /// The copy differs from the first accepted report with this id.
        changed: bool,
    },
    /// Refused: the gRPC code's name, the token reason when a token was refused, the message.
    Refused {
        /// `UNAVAILABLE`, `UNAUTHENTICATED`, …
        code: String,
        /// The token refusal's reason (`replayed`, `expired`, …), if any.
        reason: Option<String>,
        /// The message the partner got.
        message: String,
    },
    /// Held by the kit (the adapter was stopped while it waited).
    Held,
}

/// One `ReportStatus` call.
#[derive(Debug, Clone)]
pub struct Call {
    /// When it arrived.
    pub at: Instant,
    /// The correlation id.
    pub order_id: String,
    /// The report id.
    pub report_id: String,
    /// The status's short name.
    pub status: String,
    /// The tracking id.
    pub tracking_id: String,
    /// The detail.
    pub detail: String,
    /// The token's key id (from its header; empty when unreadable).
    pub key_id: String,
    /// The answer.
    pub outcome: Outcome,
}

impl Call {
    /// Whether StatusIngest holds this report now (accepted or a duplicate of an accepted one).
    pub fn landed(&self) -> bool {
        matches!(self.outcome, Outcome::Accepted | Outcome::Duplicate { .. })
    }
}

/// The switches of a scenario.
#[derive(Debug, Clone, Default)]
pub struct Mode {
    /// Every call is answered UNAVAILABLE.
    pub unavailable: bool,
    /// Every answer waits this long.
    pub delay: Duration,
    /// Seconds added to the clock tokens are checked against.
    pub clock_shift_secs: i64,
    /// Every report on this order is refused as replayed.
    pub replay_order: Option<String>,
    /// The next call is held (not answered) until this is cleared; then it is answered
    /// UNAVAILABLE.
    pub hold_next: bool,
}

#[derive(Default)]
struct State {
    mode: Mode,
    /// Orders this region sent.
    orders: HashSet<String>,
    /// Orders the partner rejected (accepted REJECTED_BY_PARTNER).
    rejected: HashSet<String>,
    /// Accepted report ids: their order and what they said.
    reports: HashMap<String, (String, [String; 4])>,
    /// Token ids accepted.
    token_ids: HashSet<String>,
    calls: Vec<Call>,
    held: bool,
}

/// One region's fake StatusIngest.
#[derive(Clone)]
pub struct Region {
    /// The region's name (`waybill-region`).
    pub name: String,
    /// Its address, `http://127.0.0.1:port`.
    pub reply_to: String,
    state: Arc<Mutex<State>>,
}

impl Region {
    /// Serves a region named `name` on a free loopback port until `stop`.
    pub async fn start(
        name: &str,
        partner_id: &str,
        audience: &str,
        keys: Arc<Keys>,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let service = FakeIngest {
            partner_id: partner_id.to_owned(),
            audience: audience.to_owned(),
            keys,
            state: state.clone(),
        };
        let routes = tonic::service::Routes::new(StatusIngestServer::new(service));
        let limits = ServerLimits {
            drain_grace: Duration::from_millis(200),
            ..ServerLimits::default()
        };
        tokio::spawn(async move {
            let services = [waybill_status_ingest::SERVICE_NAME];
            if let Err(error) =
                waybill_service_kit::grpc::serve(listener, routes, &services, &limits, stop).await
            {
                tracing::warn!(%error, "the fake StatusIngest stopped");
            }
        });
        Ok(Self {
            name: name.to_owned(),
            reply_to: format!("http://{addr}"),
            state,
        })
    }

    /// Forgets every order, report and call, and resets the switches (a new scenario).
    pub fn reset(&self) {
        *lock(&self.state) = State::default();
    }

    /// Registers `order` as sent by this region.
    pub fn sent(&self, order: &str) {
        lock(&self.state).orders.insert(order.to_owned());
    }

    /// Changes the switches.
    pub fn set(&self, change: impl FnOnce(&mut Mode)) {
        change(&mut lock(&self.state).mode);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state).calls.clone()
    }

    /// Lets a held call go (it is answered UNAVAILABLE).
    pub fn release(&self) {
        lock(&self.state).held = false;
    }

    /// Whether a call is being held now.
    pub fn holding(&self) -> bool {
        lock(&self.state).held
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct FakeIngest {
    partner_id: String,
    audience: String,
    keys: Arc<Keys>,
    state: Arc<Mutex<State>>,
}

impl FakeIngest {
    fn mode(&self) -> Mode {
        lock(&self.state).mode.clone()
    }

    async fn answer(&self, request: &pb::ReportStatusRequest) -> Answer {
        match self.check(request).await {
            Ok(answer) => answer,
            Err(status) => Answer::Refused(status),
        }
    }

    async fn check(&self, request: &pb::ReportStatusRequest) -> Result<Answer, Status> {
        let mode = self.mode();
        if mode.hold_next {
            {
                let mut state = lock(&self.state);
                state.mode.hold_next = false;
                state.held = true;
            }
            // Held until the kit has stopped the adapter and lets go.
            while lock(&self.state).held {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            return Ok(Answer::Held);
        }
        if !mode.delay.is_zero() {
            tokio::time::sleep(mode.delay).await;
        }
        if mode.unavailable {
            return Err(Status::unavailable(UNAVAILABLE_MESSAGE));
        }
        let fields = validate::report_fields(request).map_err(invalid)?;
        let report = fields.bound_report(request);
        let now = Utc::now() + chrono::Duration::seconds(mode.clock_shift_secs);
        let keys = self.keys.clone();
        let partner_id = self.partner_id.clone();
        let verified = waybill_token::verify_report(
            &request.token,
            &self.audience,
            now,
            |issuer, key_id| async move {
                if issuer != partner_id {
                    return Ok::<_, TokenError>(EnrolledKey::Refused(KeyRefusal::Unknown));
                }
                Ok(keys.lookup(&key_id))
            },
            &report,
        )
        .await
        .map_err(token_refused)?;
        let mut state = lock(&self.state);
        if !state.orders.contains(&report.order_id) {
            return Err(IngestError::NotRouted.into());
        }
        if mode.replay_order.as_deref() == Some(report.order_id.as_str())
            || state.token_ids.contains(&verified.claims.jti)
        {
            return Err(token_refused(TokenError::new(
                RejectReason::Replayed,
                "this token (its jti) was used before; sign a fresh token for every attempt",
            )));
        }
        let content = [
            report.status.clone(),
            report.tracking_id.clone(),
            report.detail.clone(),
            report.detail_code.clone(),
        ];
        match state.reports.get(&report.report_id) {
            Some((order, _)) if *order != report.order_id => Err(invalid(InvalidField::new(
                "report_id",
                format!(
                    "{:?} was already used by your partner id for another order; report ids are unique per partner",
                    report.report_id
                ),
            ))),
            Some((_, kept)) => {
                let changed = *kept != content;
                state.token_ids.insert(verified.claims.jti);
                Ok(Answer::Duplicate(changed))
            }
            None if state.rejected.contains(&report.order_id) => Err(IngestError::NotRouted.into()),
            None => {
                state.token_ids.insert(verified.claims.jti);
                if report.status == "REJECTED_BY_PARTNER" {
                    state.rejected.insert(report.order_id.clone());
                }
                state
                    .reports
                    .insert(report.report_id.clone(), (report.order_id, content));
                Ok(Answer::Accepted)
            }
        }
    }
}

/// The answer to one call.
enum Answer {
    Accepted,
    Duplicate(bool),
    Held,
    Refused(Status),
}

fn invalid(field: InvalidField) -> Status {
    IngestError::InvalidArgument(field).into()
}

fn token_refused(error: TokenError) -> Status {
    IngestError::Unauthenticated(error).into()
}

/// The token's `kid`, read without checking anything.
fn key_id_of(token: &str) -> String {
    waybill_token::ParsedToken::parse(token)
        .map(|parsed| parsed.key_id().to_owned())
        .unwrap_or_default()
}

/// The token reason in a refusal's message (`report token refused: <reason>: …`).
fn reason_of(message: &str) -> Option<String> {
    let rest = message.strip_prefix("report token refused: ")?;
    rest.split(':').next().map(str::to_owned)
}

#[tonic::async_trait]
impl StatusIngest for FakeIngest {
    async fn report_status(
        &self,
        request: Request<pb::ReportStatusRequest>,
    ) -> Result<Response<pb::ReportStatusResponse>, Status> {
        let request = request.into_inner();
        let at = Instant::now();
        let answer = self.answer(&request).await;
        let outcome = match &answer {
            Answer::Accepted => Outcome::Accepted,
            Answer::Duplicate(changed) => Outcome::Duplicate { changed: *changed },
            Answer::Held => Outcome::Held,
            Answer::Refused(status) => Outcome::Refused {
                code: format!("{:?}", status.code()).to_uppercase(),
                reason: reason_of(status.message()),
                message: status.message().to_owned(),
            },
        };
        let status = pb::OrderStatus::try_from(request.status)
            .map(|s| s.short_name().to_owned())
            .unwrap_or_else(|_| request.status.to_string());
        lock(&self.state).calls.push(Call {
            at,
            order_id: request.correlation_id.clone(),
            report_id: request.report_id.clone(),
            status,
            tracking_id: request.tracking_id.clone(),
            detail: request.detail.clone(),
            key_id: key_id_of(&request.token),
            outcome: outcome.clone(),
        });
        match answer {
            Answer::Accepted => Ok(Response::new(pb::ReportStatusResponse { duplicate: false })),
            Answer::Duplicate(_) => Ok(Response::new(pb::ReportStatusResponse { duplicate: true })),
            Answer::Held => Err(Status::unavailable(UNAVAILABLE_MESSAGE)),
            Answer::Refused(status) => Err(status),
        }
    }

    /// Each report as if it came in a `ReportStatus` call of its own, all at once, as the real
    /// one runs them (the batch's own bounds are the real service's, tested there).
    async fn report_statuses(
        &self,
        request: Request<pb::ReportStatusesRequest>,
    ) -> Result<Response<pb::ReportStatusesResponse>, Status> {
        let calls = request
            .into_inner()
            .reports
            .into_iter()
            .map(|item| self.report_status(Request::new(item.report.unwrap_or_default())));
        let results = futures::future::join_all(calls)
            .await
            .into_iter()
            .map(|answer| match answer {
                Ok(response) => pb::ReportResult {
                    duplicate: response.into_inner().duplicate,
                    ..pb::ReportResult::default()
                },
                Err(status) => result_of(&status),
            })
            .collect();
        Ok(Response::new(pb::ReportStatusesResponse { results }))
    }

    async fn get_report_stats(
        &self,
        _request: Request<pb::GetReportStatsRequest>,
    ) -> Result<Response<pb::ReportStats>, Status> {
        Err(Status::unimplemented("not part of the partner check"))
    }
}
