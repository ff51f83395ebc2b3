//! The `waybill.v1.CatalogService` implementation, served by the Orders process beside
//! `OrderService`: listing (storefronts and operators), upserting and retiring (operators only;
//! see the kit's `access_for`). Every item of a batch is checked ([`catalog_rules`]) before
//! anything is written, and the batch is written in one transaction: all or nothing.
//!
//! A change reaches `PlaceOrder` within the catalog cache's lifetime (`--catalog-cache`,
//! default one second; see [`crate::catalog`]).
//!
//! [`catalog_rules`]: crate::domain::catalog_rules

use std::collections::HashSet;

use tonic::{Request, Response, Status};
use tracing::info;
use waybill_proto::v1::{self as pb, catalog_change::Kind, catalog_service_server::CatalogService};
use waybill_service_kit::{page_token::PageTokenKey, text::quote};

use crate::{
    domain::{
        InvalidField,
        catalog_rules::{self, ItemInput},
        model::CatalogItem,
    },
    error::OrdersError,
    store::{CatalogStore, ItemChange, RetireError},
};

/// What a page token is for: tokens of other RPCs do not open as this one.
const PAGE_PURPOSE: &str = "waybill.orders.ListCatalogItems.v1";

/// The catalog service.
#[derive(Debug, Clone)]
pub struct CatalogApi {
    store: CatalogStore,
    page_tokens: PageTokenKey,
}

impl CatalogApi {
    /// The service over `store`; `page_tokens` seals `ListCatalogItems` page tokens.
    pub fn new(store: CatalogStore, page_tokens: PageTokenKey) -> Self {
        Self { store, page_tokens }
    }

    async fn list(
        &self,
        request: &pb::ListCatalogItemsRequest,
    ) -> Result<pb::ListCatalogItemsResponse, OrdersError> {
        let page_size = catalog_rules::page_size(request.page_size)?;
        // Bound to include_retired: a token from one listing does not page the other.
        let context: &[u8] = if request.include_retired {
            b"all"
        } else {
            b"active"
        };
        let after = if request.page_token.is_empty() {
            String::new()
        } else {
            self.page_tokens
                .open(PAGE_PURPOSE, context, &request.page_token)
                .and_then(|sku| String::from_utf8(sku).ok())
                .ok_or_else(|| {
                    InvalidField::new(
                        "page_token",
                        "is not a token from a previous ListCatalogItems response with the same include_retired; pass next_page_token unchanged",
                    )
                })?
        };
        let mut items = self
            .store
            .list(&after, request.include_retired, page_size + 1)
            .await?;
        let more = items.len() > page_size as usize;
        items.truncate(page_size as usize);
        let next_page_token = match items.last() {
            Some(last) if more => self
                .page_tokens
                .seal(PAGE_PURPOSE, context, last.sku.as_bytes()),
            _ => String::new(),
        };
        Ok(pb::ListCatalogItemsResponse {
            items: items.iter().map(item_to_proto).collect(),
            next_page_token,
        })
    }

    async fn upsert(
        &self,
        request: pb::UpsertCatalogItemsRequest,
    ) -> Result<pb::UpsertCatalogItemsResponse, OrdersError> {
        catalog_rules::check_batch("items", request.items.len())?;
        let mut seen = HashSet::with_capacity(request.items.len());
        for (index, item) in request.items.iter().enumerate() {
            let prefix = format!("items[{index}]");
            catalog_rules::check_item(
                &prefix,
                &ItemInput {
                    sku: &item.sku,
                    name: &item.name,
                    price_minor: item.price_minor,
                    currency_code: &item.currency_code,
                },
            )?;
            if !seen.insert(item.sku.as_str()) {
                return Err(InvalidField::new(
                    format!("{prefix}.sku"),
                    format!("{} appears twice in this call", quote(&item.sku)),
                )
                .into());
            }
        }
        let items = request
            .items
            .into_iter()
            .map(|item| CatalogItem {
                sku: item.sku,
                name: item.name,
                unit_price_minor: item.price_minor,
                currency_code: item.currency_code,
                active: true,
            })
            .collect();
        let changes = self.store.upsert(items, request.dry_run).await?;
        let mut response = pb::UpsertCatalogItemsResponse {
            dry_run: request.dry_run,
            ..Default::default()
        };
        for change in &changes {
            let kind = kind_of(change);
            match kind {
                Kind::Created => response.created += 1,
                Kind::Changed => response.changed += 1,
                _ => response.unchanged += 1,
            }
            response.changes.push(pb::CatalogChange {
                kind: kind.into(),
                before: change.before.as_ref().map(item_to_proto),
                after: Some(item_to_proto(&change.after)),
            });
        }
        if !request.dry_run {
            info!(
                created = response.created,
                changed = response.changed,
                unchanged = response.unchanged,
                "catalog items upserted"
            );
        }
        Ok(response)
    }

    async fn retire(
        &self,
        request: &pb::RetireCatalogItemsRequest,
    ) -> Result<pb::RetireCatalogItemsResponse, OrdersError> {
        catalog_rules::check_batch("skus", request.skus.len())?;
        for (index, sku) in request.skus.iter().enumerate() {
            catalog_rules::check_sku(&format!("skus[{index}]"), sku)?;
        }
        let retired = self
            .store
            .retire(&request.skus)
            .await
            .map_err(|error| match error {
                RetireError::Unknown(sku) => OrdersError::UnknownSku(sku),
                RetireError::Store(error) => error.into(),
            })?;
        info!(retired, "catalog items retired");
        Ok(pb::RetireCatalogItemsResponse {
            retired: u32::try_from(retired).unwrap_or(u32::MAX),
        })
    }
}

fn kind_of(change: &ItemChange) -> Kind {
    match &change.before {
        None => Kind::Created,
        Some(_) if change.changes() => Kind::Changed,
        Some(_) => Kind::Unchanged,
    }
}

/// The protobuf form of a catalog item.
pub fn item_to_proto(item: &CatalogItem) -> pb::CatalogItem {
    pb::CatalogItem {
        sku: item.sku.clone(),
        name: item.name.clone(),
        price_minor: item.unit_price_minor,
        currency_code: item.currency_code.clone(),
        retired: !item.active,
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl CatalogService for CatalogApi {
    async fn list_catalog_items(
        &self,
        request: Request<pb::ListCatalogItemsRequest>,
    ) -> Reply<pb::ListCatalogItemsResponse> {
        Ok(Response::new(self.list(request.get_ref()).await?))
    }

    async fn upsert_catalog_items(
        &self,
        request: Request<pb::UpsertCatalogItemsRequest>,
    ) -> Reply<pb::UpsertCatalogItemsResponse> {
        Ok(Response::new(self.upsert(request.into_inner()).await?))
    }

    async fn retire_catalog_items(
        &self,
        request: Request<pb::RetireCatalogItemsRequest>,
    ) -> Reply<pb::RetireCatalogItemsResponse> {
        Ok(Response::new(self.retire(request.get_ref()).await?))
    }
}
