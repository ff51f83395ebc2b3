//! The store's trait, [`OrderStore`], and what placing an order did ([`Placement`]).

use std::fmt;

use async_trait::async_trait;
use uuid::Uuid;

use super::error::StoreError;
use crate::domain::{
    model::{CatalogItem, NewOrder, OrderRecord, StatusEvent},
    page_token::PageCursor,
};

/// What `place_order` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A new order was written.
    Created(OrderRecord),
    /// The idempotency key was used before with the same request: nothing was written, this is
    /// the original order as it is now.
    Replayed(OrderRecord),
}

/// Orders, their lines and status history, and the catalog they are priced from.
#[async_trait]
pub trait OrderStore: Send + Sync + fmt::Debug + 'static {
    /// The catalog entries for `skus` (unknown SKUs are simply absent).
    async fn catalog_items(&self, skus: &[String]) -> Result<Vec<CatalogItem>, StoreError>;

    /// Writes `order` with its lines, `PLACED` event and `PENDING` dispatch row in one
    /// transaction, or recognises a replay of its idempotency key.
    async fn place_order(&self, order: &NewOrder) -> Result<Placement, StoreError>;

    /// One order with lines and history.
    async fn get_order(&self, id: Uuid) -> Result<Option<OrderRecord>, StoreError>;

    /// A customer's orders, newest first, strictly after `after`, at most `limit`.
    async fn list_orders(
        &self,
        customer_id: &str,
        after: Option<PageCursor>,
        limit: u32,
    ) -> Result<Vec<OrderRecord>, StoreError>;

    /// The order's history events with a sequence greater than `after_seq`, oldest first.
    async fn history_after(&self, id: Uuid, after_seq: i64)
    -> Result<Vec<StatusEvent>, StoreError>;
}
