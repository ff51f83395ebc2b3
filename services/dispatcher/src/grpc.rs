//! `waybill.v1.DispatchAdmin`: what operators use to see and steer the relay. Validation
//! happens here, before anything is touched, so a bad request changes nothing.

use std::{sync::Arc, time::Duration};

use tonic::{Request, Response, Status};
use tracing::info;
use uuid::Uuid;
use waybill_proto::v1::{
    self, DispatchState, dispatch_admin_server::DispatchAdmin, explain_route_request::Target,
};
use waybill_service_kit::{
    clock::SharedClock,
    security::Caller,
    text::{TextKind, check_text, quote},
};

use crate::{
    convert::{self, to_proto_duration},
    domain::model::{DispatchFilter, PartnerKeyRecord, PartnerRecord, RouteRecord},
    error::DispatchError,
    kafka::{TopicCreator, TopicNames, producer::SendHealth},
    metrics::RelayMetrics,
    store::{DispatchStore, RETRYABLE_STATES, StoreError},
};

/// Default and largest `ListDispatches` page.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1_000;
/// Most order ids one `RetryDispatches` may name.
const MAX_RETRY_IDS: usize = 1_000;
/// Handover deadline of a partner enrolled without one.
const DEFAULT_HANDOVER_DEADLINE: Duration = Duration::from_secs(600);
/// Re-sends of an unconfirmed order for a partner enrolled without a budget: with the default
/// deadline, about an hour of re-sends, so an order a broker lost still reaches the partner.
pub const DEFAULT_RESEND_BUDGET: i32 = 5;

/// The admin service.
#[derive(Debug, Clone)]
pub struct AdminApi {
    store: Arc<dyn DispatchStore>,
    topics: Arc<dyn TopicCreator>,
    topic_names: TopicNames,
    clock: SharedClock,
    metrics: Arc<RelayMetrics>,
    send_health: Arc<SendHealth>,
    instance_id: String,
}

impl AdminApi {
    /// An admin API over `store`; enrolment creates topics with `topics`.
    pub fn new(
        store: Arc<dyn DispatchStore>,
        topics: Arc<dyn TopicCreator>,
        topic_names: TopicNames,
        clock: SharedClock,
        metrics: Arc<RelayMetrics>,
        send_health: Arc<SendHealth>,
        instance_id: String,
    ) -> Self {
        Self {
            store,
            topics,
            topic_names,
            clock,
            metrics,
            send_health,
            instance_id,
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn invalid(message: impl Into<String>) -> DispatchError {
    DispatchError::InvalidArgument(message.into())
}

fn parse_order_id(text: &str) -> Result<Uuid, DispatchError> {
    Uuid::parse_str(text.trim())
        .map_err(|_| invalid(format!("order id {} is not a UUID", quote(text))))
}

/// A free-text field checked by the kit's one rule (bounded, no control characters: Postgres
/// cannot store a NUL, SQLite can, and neither may differ from the other).
fn check_field(field: &str, value: &str, max_chars: usize) -> Result<(), DispatchError> {
    check_text(field, value, max_chars, TextKind::Line).map_err(|e| invalid(e.to_string()))
}

/// The free-text fields of an address (ExplainRoute), bounded as Orders bounds them.
fn check_address(address: &v1::Address) -> Result<(), DispatchError> {
    check_field("address.line1", &address.line1, 200)?;
    check_field("address.line2", &address.line2, 200)?;
    check_field("address.city", &address.city, 100)?;
    check_field("address.region", &address.region, 100)?;
    check_field("address.postal_code", &address.postal_code, 20)?;
    check_field("address.country_code", &address.country_code, 2)
}

fn check_partner_id(id: &str) -> Result<(), DispatchError> {
    let valid = !id.is_empty()
        && id.len() <= 63
        && !id.starts_with('-')
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(invalid(format!(
            "partner id {} must be 1-63 lower-case letters, digits or '-', not starting with '-'",
            quote(id)
        )))
    }
}

fn check_name(what: &str, value: &str) -> Result<(), DispatchError> {
    let valid = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} {} must be 1-64 letters, digits, '-', '_' or '.'",
            quote(value)
        )))
    }
}

fn filter_from(filter: Option<v1::DispatchFilter>) -> Result<DispatchFilter, DispatchError> {
    let filter = filter.unwrap_or_default();
    check_field("filter.partner_id", &filter.partner_id, 63)?;
    Ok(DispatchFilter {
        state: convert::state_filter(filter.state).map_err(invalid)?,
        partner_id: Some(filter.partner_id.trim().to_owned()).filter(|p| !p.is_empty()),
    })
}

/// Who made an admin call: the caller the kit's identity layer attached, or `anonymous` on an
/// open (development) listener. The layer already logged who called which RPC; handlers that
/// change something add what they changed to the same `waybill::audit` trail.
fn caller_of<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Caller>()
        .map_or_else(|| "anonymous".to_owned(), |caller| caller.name.to_string())
}

fn partner_not_found(id: &str) -> DispatchError {
    DispatchError::NotFound(format!(
        "partner {id} not found; enroll it first with EnrollPartner"
    ))
}

impl AdminApi {
    async fn retry(&self, request: v1::RetryDispatchesRequest) -> Result<Vec<Uuid>, DispatchError> {
        let now = self.clock.now();
        let retryable = || RETRYABLE_STATES.map(DispatchState::short_name).join(", ");
        let retried = if request.order_ids.is_empty() {
            let filter = filter_from(request.filter)?;
            match filter.state {
                Some(state) if RETRYABLE_STATES.contains(&state) => {}
                Some(state) => {
                    return Err(invalid(format!(
                        "state {} cannot be retried; name one of {}",
                        state.short_name(),
                        retryable()
                    )));
                }
                None => {
                    return Err(invalid(
                        "name order_ids, or a filter with a state (e.g. DEAD)",
                    ));
                }
            }
            self.store.retry(&[], &filter, now).await?
        } else {
            if request.order_ids.len() > MAX_RETRY_IDS {
                return Err(invalid(format!(
                    "at most {MAX_RETRY_IDS} order ids per call"
                )));
            }
            let ids = request
                .order_ids
                .iter()
                .map(|id| parse_order_id(id))
                .collect::<Result<Vec<_>, _>>()?;
            // Check everything first: a request that cannot be done whole changes nothing.
            for id in &ids {
                let Some((row, _)) = self.store.get_dispatch(*id).await? else {
                    return Err(DispatchError::NotFound(format!(
                        "order {id} has no dispatch row"
                    )));
                };
                if !RETRYABLE_STATES.contains(&row.state) {
                    return Err(DispatchError::FailedPrecondition(format!(
                        "order {id} is {}; only {} can be retried",
                        row.state.short_name(),
                        retryable()
                    )));
                }
                if row.lease_expires_at.is_some_and(|until| until > now) {
                    return Err(DispatchError::FailedPrecondition(format!(
                        "order {id} is being worked on by {} right now; try again shortly",
                        row.lease_owner.unwrap_or_default()
                    )));
                }
            }
            self.store
                .retry(&ids, &DispatchFilter::default(), now)
                .await?
        };
        Ok(retried)
    }

    async fn enroll(&self, partner: Option<v1::Partner>) -> Result<v1::Partner, DispatchError> {
        let partner = partner.ok_or_else(|| invalid("partner is required"))?;
        let id = partner.id.trim().to_owned();
        check_partner_id(&id)?;
        check_field("partner.display_name", &partner.display_name, 200)?;
        let deadline = match partner.handover_deadline {
            None => DEFAULT_HANDOVER_DEADLINE,
            Some(d) if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) => {
                return Err(invalid("handover_deadline must be positive"));
            }
            Some(d) => Duration::new(
                u64::try_from(d.seconds).unwrap_or(u64::MAX),
                u32::try_from(d.nanos).unwrap_or(0),
            ),
        };
        if deadline > Duration::from_secs(30 * 86_400) {
            return Err(invalid("handover_deadline must be at most 30 days"));
        }
        let resend_budget = partner.resend_budget.unwrap_or(DEFAULT_RESEND_BUDGET);
        if !(0..=100).contains(&resend_budget) {
            return Err(invalid("resend_budget must be between 0 and 100"));
        }
        let topic = self.topic_names.partner_topic(&id);
        // The topic first: a partner is saved only once it has somewhere to receive orders.
        self.topics.ensure_topic(&topic).await?;
        let now = self.clock.now();
        let display_name = match partner.display_name.trim() {
            "" => id.clone(),
            name => name.to_owned(),
        };
        let record = PartnerRecord {
            id,
            display_name,
            // Enrolling (again) enables: DisablePartner is the way to switch one off.
            enabled: true,
            handover_deadline: chrono::Duration::from_std(deadline)
                .map_err(|_| invalid("handover_deadline too long"))?,
            resend_budget,
            topic,
            created_at: now,
            updated_at: now,
        };
        Ok(convert::partner(self.store.upsert_partner(&record).await?))
    }

    async fn set_route(&self, route: Option<v1::Route>) -> Result<v1::Route, DispatchError> {
        let route = route.ok_or_else(|| invalid("route is required"))?;
        let id = route.id.trim().to_owned();
        check_name("route id", &id)?;
        let partner_id = route.partner_id.trim().to_owned();
        check_partner_id(&partner_id)?;
        check_field("route.region", &route.region, 100)?;
        check_field("route.postal_prefix", &route.postal_prefix, 20)?;
        let country_code = route.country_code.trim().to_ascii_uppercase();
        if country_code.len() != 2 || !country_code.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(invalid(format!(
                "country_code {} must be an ISO 3166-1 alpha-2 code such as DE",
                quote(&route.country_code)
            )));
        }
        let record = RouteRecord {
            id,
            partner_id: partner_id.clone(),
            country_code,
            region: route.region.trim().to_owned(),
            postal_prefix: route.postal_prefix.trim().to_owned(),
            priority: route.priority,
            enabled: route.enabled,
        };
        match self.store.set_route(&record, self.clock.now()).await {
            Ok(saved) => Ok(convert::route(saved)),
            Err(StoreError::MissingReference) => Err(partner_not_found(&partner_id)),
            Err(StoreError::CheckViolation) => Err(invalid("route rejected: check country_code")),
            Err(other) => Err(other.into()),
        }
    }

    async fn add_key(
        &self,
        request: v1::AddPartnerKeyRequest,
    ) -> Result<v1::PartnerKey, DispatchError> {
        let partner_id = request.partner_id.trim().to_owned();
        check_partner_id(&partner_id)?;
        let key_id = request.key_id.trim().to_owned();
        check_name("key id", &key_id)?;
        if request.public_key.len() != 32 {
            return Err(invalid(format!(
                "public_key must be the raw 32-byte Ed25519 key, got {} bytes",
                request.public_key.len()
            )));
        }
        let record = PartnerKeyRecord {
            partner_id: partner_id.clone(),
            key_id: key_id.clone(),
            public_key: request.public_key,
            created_at: self.clock.now(),
            revoked_at: None,
        };
        match self.store.add_key(&record).await {
            Ok(saved) => Ok(convert::key(saved)),
            Err(StoreError::MissingReference) => Err(partner_not_found(&partner_id)),
            Err(StoreError::Duplicate) => Err(DispatchError::AlreadyExists(format!(
                "partner {partner_id} already has a key {key_id}; use a new key id to rotate"
            ))),
            Err(other) => Err(other.into()),
        }
    }

    async fn explain(
        &self,
        request: v1::ExplainRouteRequest,
    ) -> Result<v1::ExplainRouteResponse, DispatchError> {
        let ship_to = match request.target {
            Some(Target::OrderId(id)) => {
                let order_id = parse_order_id(&id)?;
                self.store
                    .order_destination(order_id)
                    .await?
                    .ok_or_else(|| DispatchError::NotFound(format!("order {order_id} not found")))?
            }
            Some(Target::Address(address)) => {
                check_address(&address)?;
                if address.country_code.trim().is_empty() {
                    return Err(invalid("address.country_code is required"));
                }
                convert::ship_to(address)
            }
            None => return Err(invalid("name an order_id or an address")),
        };
        let table = self.store.routing_table().await?;
        Ok(convert::explanation(table.explain(&ship_to)))
    }

    async fn stats(&self) -> Result<v1::RelayStats, DispatchError> {
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

#[tonic::async_trait]
impl DispatchAdmin for AdminApi {
    async fn list_dispatches(
        &self,
        request: Request<v1::ListDispatchesRequest>,
    ) -> Reply<v1::ListDispatchesResponse> {
        let request = request.into_inner();
        let filter = filter_from(request.filter)?;
        let limit = match request.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        // The page token is the last order id of the previous page, in the clear: it needs no
        // authentication because it grants nothing (any UUID is a valid position in a list the
        // operator may read in full; a forged one only skips rows) and it decodes to a UUID or
        // is refused, so no unbounded value reaches a store.
        let after = match request.page_token.trim() {
            "" => None,
            token => Some(Uuid::parse_str(token).map_err(|_| {
                invalid("page_token is not one this service issued; pass next_page_token unchanged")
            })?),
        };
        let rows = self
            .store
            .list_dispatches(&filter, after, limit)
            .await
            .map_err(DispatchError::from)?;
        let next_page_token = match rows.last() {
            Some(last) if rows.len() == limit as usize => last.order_id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(v1::ListDispatchesResponse {
            dispatches: rows
                .into_iter()
                .map(|row| convert::dispatch(row, Vec::new()))
                .collect(),
            next_page_token,
        }))
    }

    async fn get_dispatch(&self, request: Request<v1::GetDispatchRequest>) -> Reply<v1::Dispatch> {
        let order_id = parse_order_id(&request.into_inner().order_id)?;
        match self
            .store
            .get_dispatch(order_id)
            .await
            .map_err(DispatchError::from)?
        {
            Some((row, attempts)) => Ok(Response::new(convert::dispatch(row, attempts))),
            None => {
                Err(DispatchError::NotFound(format!("order {order_id} has no dispatch row")).into())
            }
        }
    }

    async fn retry_dispatches(
        &self,
        request: Request<v1::RetryDispatchesRequest>,
    ) -> Reply<v1::RetryDispatchesResponse> {
        let caller = caller_of(&request);
        let retried = self.retry(request.into_inner()).await?;
        let order_ids: Vec<String> = retried.iter().map(Uuid::to_string).collect();
        info!(target: "waybill::audit", %caller, rpc = "RetryDispatches", count = retried.len(), order_ids = %order_ids.join(","), "dispatches retried");
        Ok(Response::new(v1::RetryDispatchesResponse {
            order_ids: retried.iter().map(Uuid::to_string).collect(),
        }))
    }

    async fn list_partners(
        &self,
        _request: Request<v1::ListPartnersRequest>,
    ) -> Reply<v1::ListPartnersResponse> {
        let partners = self
            .store
            .list_partners()
            .await
            .map_err(DispatchError::from)?;
        Ok(Response::new(v1::ListPartnersResponse {
            partners: partners.into_iter().map(convert::partner).collect(),
        }))
    }

    async fn enroll_partner(
        &self,
        request: Request<v1::EnrollPartnerRequest>,
    ) -> Reply<v1::Partner> {
        let caller = caller_of(&request);
        let partner = self.enroll(request.into_inner().partner).await?;
        info!(target: "waybill::audit", %caller, rpc = "EnrollPartner", partner_id = %partner.id, "partner enrolled");
        Ok(Response::new(partner))
    }

    async fn disable_partner(
        &self,
        request: Request<v1::DisablePartnerRequest>,
    ) -> Reply<v1::Partner> {
        let caller = caller_of(&request);
        let id = request.into_inner().partner_id.trim().to_owned();
        check_partner_id(&id)?;
        match self
            .store
            .disable_partner(&id, self.clock.now())
            .await
            .map_err(DispatchError::from)?
        {
            Some(partner) => {
                info!(target: "waybill::audit", %caller, rpc = "DisablePartner", partner_id = %id, "partner disabled");
                Ok(Response::new(convert::partner(partner)))
            }
            None => Err(partner_not_found(&id).into()),
        }
    }

    async fn add_partner_key(
        &self,
        request: Request<v1::AddPartnerKeyRequest>,
    ) -> Reply<v1::PartnerKey> {
        let caller = caller_of(&request);
        let key = self.add_key(request.into_inner()).await?;
        info!(target: "waybill::audit", %caller, rpc = "AddPartnerKey", partner_id = %key.partner_id, key_id = %key.key_id, "partner key added");
        Ok(Response::new(key))
    }

    async fn revoke_partner_key(
        &self,
        request: Request<v1::RevokePartnerKeyRequest>,
    ) -> Reply<v1::PartnerKey> {
        let caller = caller_of(&request);
        let request = request.into_inner();
        let partner_id = request.partner_id.trim();
        let key_id = request.key_id.trim();
        info!(target: "waybill::audit", %caller, rpc = "RevokePartnerKey", partner_id = %quote(partner_id), key_id = %quote(key_id), "partner key revocation requested");
        check_partner_id(partner_id)?;
        check_name("key id", key_id)?;
        match self
            .store
            .revoke_key(partner_id, key_id, self.clock.now())
            .await
            .map_err(DispatchError::from)?
        {
            Some(key) => Ok(Response::new(convert::key(key))),
            None => Err(DispatchError::NotFound(format!(
                "partner {partner_id} has no key {key_id}"
            ))
            .into()),
        }
    }

    async fn list_partner_keys(
        &self,
        request: Request<v1::ListPartnerKeysRequest>,
    ) -> Reply<v1::ListPartnerKeysResponse> {
        let partner_id = request.into_inner().partner_id.trim().to_owned();
        check_partner_id(&partner_id)?;
        let keys = self
            .store
            .list_keys(&partner_id)
            .await
            .map_err(DispatchError::from)?;
        if keys.is_empty()
            && !self
                .store
                .list_partners()
                .await
                .map_err(DispatchError::from)?
                .iter()
                .any(|p| p.id == partner_id)
        {
            return Err(partner_not_found(&partner_id).into());
        }
        Ok(Response::new(v1::ListPartnerKeysResponse {
            keys: keys.into_iter().map(convert::key).collect(),
        }))
    }

    async fn list_routes(
        &self,
        _request: Request<v1::ListRoutesRequest>,
    ) -> Reply<v1::ListRoutesResponse> {
        let routes = self
            .store
            .list_routes()
            .await
            .map_err(DispatchError::from)?;
        Ok(Response::new(v1::ListRoutesResponse {
            routes: routes.into_iter().map(convert::route).collect(),
        }))
    }

    async fn set_route(&self, request: Request<v1::SetRouteRequest>) -> Reply<v1::Route> {
        let caller = caller_of(&request);
        let route = self.set_route(request.into_inner().route).await?;
        info!(target: "waybill::audit", %caller, rpc = "SetRoute", route_id = %route.id, partner_id = %route.partner_id, country = %route.country_code, "route set");
        Ok(Response::new(route))
    }

    async fn delete_route(
        &self,
        request: Request<v1::DeleteRouteRequest>,
    ) -> Reply<v1::DeleteRouteResponse> {
        let caller = caller_of(&request);
        let id = request.into_inner().route_id.trim().to_owned();
        check_name("route id", &id)?;
        info!(target: "waybill::audit", %caller, rpc = "DeleteRoute", route_id = %quote(&id), "route deletion requested");
        if self
            .store
            .delete_route(&id)
            .await
            .map_err(DispatchError::from)?
        {
            Ok(Response::new(v1::DeleteRouteResponse {}))
        } else {
            Err(DispatchError::NotFound(format!("route {id} not found")).into())
        }
    }

    async fn explain_route(
        &self,
        request: Request<v1::ExplainRouteRequest>,
    ) -> Reply<v1::ExplainRouteResponse> {
        Ok(Response::new(self.explain(request.into_inner()).await?))
    }

    async fn get_relay_stats(
        &self,
        _request: Request<v1::GetRelayStatsRequest>,
    ) -> Reply<v1::RelayStats> {
        Ok(Response::new(self.stats().await?))
    }
}
