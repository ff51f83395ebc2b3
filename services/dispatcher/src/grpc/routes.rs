//! Routes, the table that picks each order's partner: `ListRoutes`, `SetRoute`, `DeleteRoute`,
//! and `ExplainRoute` (which route an order or an address would take, and why). A change to
//! routing — here, or a partner disabled — is weighed before it is made ([`AdminApi::weigh`]):
//! its answer says which countries it leaves without a route and how the last day's orders
//! would be routed now, on a dry run (which changes nothing and is not in the audit trail) and
//! when applied (the audit line says the same).

use chrono::{DateTime, Utc};
use tracing::info;
use waybill_proto::v1::{self, explain_route_request::Target};
use waybill_service_kit::text::quote;

use super::AdminApi;
use crate::{
    convert,
    domain::{
        model::RouteRecord,
        request::{self, InvalidField},
        route_change::{
            self, MAX_DESTINATIONS, RoutingChange, RoutingImpact, describe, recent_window,
        },
        routing::RoutingTable,
    },
    error::{DispatchError, NotFound},
    store::StoreError,
};

impl AdminApi {
    pub(super) async fn routes(&self) -> Result<v1::ListRoutesResponse, DispatchError> {
        let routes = self.store.list_routes().await?;
        Ok(v1::ListRoutesResponse {
            routes: routes.into_iter().map(convert::route).collect(),
        })
    }

    pub(super) async fn save_route(
        &self,
        caller: &str,
        request: v1::SetRouteRequest,
    ) -> Result<v1::Route, DispatchError> {
        let route = request
            .route
            .ok_or_else(|| InvalidField::new("route", "is required"))?;
        let id = route.id.trim().to_owned();
        request::name("route.id", &id)?;
        let partner_id = route.partner_id.trim().to_owned();
        request::partner_id("route.partner_id", &partner_id)?;
        request::text("route.region", &route.region, 100)?;
        request::text("route.postal_prefix", &route.postal_prefix, 20)?;
        let country_code = request::country_code("route.country_code", &route.country_code)?;
        let record = RouteRecord {
            id,
            partner_id: partner_id.clone(),
            country_code,
            region: route.region.trim().to_owned(),
            postal_prefix: route.postal_prefix.trim().to_owned(),
            priority: route.priority,
            enabled: route.enabled,
        };
        let weighed = self.weigh(&RoutingChange::SetRoute(record.clone())).await?;
        if request.dry_run {
            if weighed.before.partner(&partner_id).is_none() {
                return Err(NotFound::Partner(partner_id).into());
            }
            return Ok(v1::Route {
                impact: Some(weighed.answer(false)),
                ..convert::route(record)
            });
        }
        let route = match self.store.set_route(&record, self.clock.now()).await {
            Ok(saved) => convert::route(saved),
            Err(StoreError::MissingReference) => return Err(NotFound::Partner(partner_id).into()),
            Err(StoreError::CheckViolation) => {
                return Err(InvalidField::new(
                    "route.country_code",
                    "was rejected by the database's check; use an ISO 3166-1 alpha-2 code \
                     such as DE",
                )
                .into());
            }
            Err(other) => return Err(other.into()),
        };
        info!(target: "waybill::audit", %caller, rpc = "SetRoute", route_id = %route.id, partner_id = %route.partner_id, country = %route.country_code, impact = %describe(&weighed.impact), "route set");
        Ok(v1::Route {
            impact: Some(weighed.answer(true)),
            ..route
        })
    }

    pub(super) async fn remove_route(
        &self,
        caller: &str,
        request: v1::DeleteRouteRequest,
    ) -> Result<v1::DeleteRouteResponse, DispatchError> {
        let id = request.route_id.trim();
        if !request.dry_run {
            info!(target: "waybill::audit", %caller, rpc = "DeleteRoute", route_id = %quote(id), "route deletion requested");
        }
        request::name("route_id", id)?;
        let weighed = self
            .weigh(&RoutingChange::DeleteRoute(id.to_owned()))
            .await?;
        let exists = weighed.before.routes().iter().any(|route| route.id == id);
        if !exists || (!request.dry_run && !self.store.delete_route(id).await?) {
            return Err(NotFound::Route(id.to_owned()).into());
        }
        if !request.dry_run {
            info!(target: "waybill::audit", %caller, rpc = "DeleteRoute", route_id = %id, impact = %describe(&weighed.impact), "route deleted");
        }
        Ok(v1::DeleteRouteResponse {
            impact: Some(weighed.answer(!request.dry_run)),
        })
    }

    /// What `change` does to routing as it stands now, weighed over the last day's orders by
    /// the relay's own routing ([`crate::domain::route_change`]).
    pub(super) async fn weigh(&self, change: &RoutingChange) -> Result<Weighed, DispatchError> {
        let before = self.store.routing_table().await?;
        let after = change.apply(&before);
        let since = self.clock.now() - recent_window();
        let mut recent = self
            .store
            .recent_destinations(since, MAX_DESTINATIONS + 1)
            .await?;
        let partial = recent.len() > MAX_DESTINATIONS as usize;
        recent.truncate(MAX_DESTINATIONS as usize);
        let impact = route_change::impact(&before, &after, &recent);
        Ok(Weighed {
            before,
            impact,
            since,
            partial,
        })
    }

    pub(super) async fn explain(
        &self,
        request: v1::ExplainRouteRequest,
    ) -> Result<v1::ExplainRouteResponse, DispatchError> {
        let ship_to = match request.target {
            Some(Target::OrderId(id)) => {
                let order_id = request::order_id("order_id", &id)?;
                self.store
                    .order_destination(order_id)
                    .await?
                    .ok_or(NotFound::Order(order_id))?
            }
            Some(Target::Address(address)) => {
                request::address(&address)?;
                convert::ship_to(address)
            }
            None => {
                return Err(InvalidField::new(
                    "target",
                    "is required: name an order_id or an address",
                )
                .into());
            }
        };
        let table = self.store.routing_table().await?;
        Ok(convert::explanation(table.explain(&ship_to)))
    }
}

/// A change weighed: the table it was weighed against and what it does.
#[derive(Debug)]
pub(super) struct Weighed {
    /// Routing as it is now.
    pub(super) before: RoutingTable,
    /// What the change does.
    pub(super) impact: RoutingImpact,
    /// The orders weighed are those created since then.
    pub(super) since: DateTime<Utc>,
    /// More destinations than the bound: the busiest were weighed.
    pub(super) partial: bool,
}

impl Weighed {
    /// The impact as answered (`applied`: the change was made).
    pub(super) fn answer(&self, applied: bool) -> v1::RoutingImpact {
        convert::impact(&self.impact, self.since, self.partial, applied)
    }
}
