//! `waybill.v1.DispatchAdmin`: what operators use to see and steer the relay.
//!
//! Every RPC is one line from request to `Status`: an inner method of [`AdminApi`] checks the
//! request first (the checks are in [`crate::domain::request`], so a bad request changes
//! nothing), does the work and returns a typed [`DispatchError`], which becomes a `Status` in
//! one place (`From<DispatchError> for Status`). Changes are added to the `waybill::audit`
//! trail with the caller.
//!
//! - [`dispatches`]: `ListDispatches`, `GetDispatch`, `RetryDispatches`, `GetRelayStats`.
//! - [`partners`]: `ListPartners`, `EnrollPartner`, `UpdatePartner`, `DisablePartner` and the partners' signing
//!   keys (`AddPartnerKey`, `RevokePartnerKey`, `ListPartnerKeys`).
//! - [`routes`]: `ListRoutes`, `SetRoute`, `DeleteRoute`, `ExplainRoute`.

mod dispatches;
mod partners;
mod routes;

use std::sync::Arc;

use tonic::{Request, Response, Status};
use waybill_proto::v1::{self, dispatch_admin_server::DispatchAdmin};
use waybill_service_kit::{clock::SharedClock, security::Caller};

pub use crate::domain::request::DEFAULT_RESEND_BUDGET;
use crate::{
    error::DispatchError,
    kafka::{TopicCreator, TopicNames, producer::SendHealth},
    metrics::RelayMetrics,
    store::AdminStore,
};

/// The admin service.
#[derive(Debug, Clone)]
pub struct AdminApi {
    store: Arc<dyn AdminStore>,
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
        store: Arc<dyn AdminStore>,
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

/// The result of an inner method as a reply: the one place a [`DispatchError`] becomes a
/// `Status`.
fn reply<T>(result: Result<T, DispatchError>) -> Reply<T> {
    result.map(Response::new).map_err(Status::from)
}

/// Who made an admin call: the caller the kit's identity layer attached, or `anonymous` on an
/// open (development) listener. The layer already logged who called which RPC; methods that
/// change something add what they changed to the same `waybill::audit` trail.
fn caller_of<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Caller>()
        .map_or_else(|| "anonymous".to_owned(), |caller| caller.name.to_string())
}

#[tonic::async_trait]
impl DispatchAdmin for AdminApi {
    async fn list_dispatches(
        &self,
        request: Request<v1::ListDispatchesRequest>,
    ) -> Reply<v1::ListDispatchesResponse> {
        reply(self.dispatch_page(request.into_inner()).await)
    }

    async fn get_dispatch(&self, request: Request<v1::GetDispatchRequest>) -> Reply<v1::Dispatch> {
        reply(self.dispatch(&request.into_inner().order_id).await)
    }

    async fn retry_dispatches(
        &self,
        request: Request<v1::RetryDispatchesRequest>,
    ) -> Reply<v1::RetryDispatchesResponse> {
        reply(self.retry(&caller_of(&request), request.into_inner()).await)
    }

    async fn list_partners(
        &self,
        _request: Request<v1::ListPartnersRequest>,
    ) -> Reply<v1::ListPartnersResponse> {
        reply(self.partners().await)
    }

    async fn enroll_partner(
        &self,
        request: Request<v1::EnrollPartnerRequest>,
    ) -> Reply<v1::Partner> {
        reply(
            self.enroll(&caller_of(&request), request.into_inner().partner)
                .await,
        )
    }

    async fn update_partner(
        &self,
        request: Request<v1::UpdatePartnerRequest>,
    ) -> Reply<v1::UpdatePartnerResponse> {
        reply(
            self.update(&caller_of(&request), request.into_inner())
                .await,
        )
    }

    async fn disable_partner(
        &self,
        request: Request<v1::DisablePartnerRequest>,
    ) -> Reply<v1::Partner> {
        reply(
            self.disable(&caller_of(&request), request.into_inner())
                .await,
        )
    }

    async fn add_partner_key(
        &self,
        request: Request<v1::AddPartnerKeyRequest>,
    ) -> Reply<v1::PartnerKey> {
        reply(
            self.add_key(&caller_of(&request), request.into_inner())
                .await,
        )
    }

    async fn revoke_partner_key(
        &self,
        request: Request<v1::RevokePartnerKeyRequest>,
    ) -> Reply<v1::PartnerKey> {
        reply(
            self.revoke_key(&caller_of(&request), request.into_inner())
                .await,
        )
    }

    async fn list_partner_keys(
        &self,
        request: Request<v1::ListPartnerKeysRequest>,
    ) -> Reply<v1::ListPartnerKeysResponse> {
        reply(self.keys(&request.into_inner().partner_id).await)
    }

    async fn list_routes(
        &self,
        _request: Request<v1::ListRoutesRequest>,
    ) -> Reply<v1::ListRoutesResponse> {
        reply(self.routes().await)
    }

    async fn set_route(&self, request: Request<v1::SetRouteRequest>) -> Reply<v1::Route> {
        reply(
            self.save_route(&caller_of(&request), request.into_inner())
                .await,
        )
    }

    async fn delete_route(
        &self,
        request: Request<v1::DeleteRouteRequest>,
    ) -> Reply<v1::DeleteRouteResponse> {
        reply(
            self.remove_route(&caller_of(&request), request.into_inner())
                .await,
        )
    }

    async fn explain_route(
        &self,
        request: Request<v1::ExplainRouteRequest>,
    ) -> Reply<v1::ExplainRouteResponse> {
        reply(self.explain(request.into_inner()).await)
    }

    async fn get_relay_stats(
        &self,
        _request: Request<v1::GetRelayStatsRequest>,
    ) -> Reply<v1::RelayStats> {
        reply(self.stats().await)
    }
}
