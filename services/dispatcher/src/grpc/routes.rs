//! Routes, the table that picks each order's partner: `ListRoutes`, `SetRoute`, `DeleteRoute`,
//! and `ExplainRoute` (which route an order or an address would take, and why).

use tracing::info;
use waybill_proto::v1::{self, explain_route_request::Target};
use waybill_service_kit::text::quote;

use super::AdminApi;
use crate::{
    convert,
    domain::{
        model::RouteRecord,
        request::{self, InvalidField},
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
        route: Option<v1::Route>,
    ) -> Result<v1::Route, DispatchError> {
        let route = route.ok_or_else(|| InvalidField::new("route", "is required"))?;
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
        info!(target: "waybill::audit", %caller, rpc = "SetRoute", route_id = %route.id, partner_id = %route.partner_id, country = %route.country_code, "route set");
        Ok(route)
    }

    pub(super) async fn remove_route(
        &self,
        caller: &str,
        request: v1::DeleteRouteRequest,
    ) -> Result<v1::DeleteRouteResponse, DispatchError> {
        let id = request.route_id.trim();
        request::name("route_id", id)?;
        info!(target: "waybill::audit", %caller, rpc = "DeleteRoute", route_id = %quote(id), "route deletion requested");
        if self.store.delete_route(id).await? {
            Ok(v1::DeleteRouteResponse {})
        } else {
            Err(NotFound::Route(id.to_owned()).into())
        }
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
