//! The `waybill.v1.OrderService` implementation: turns requests into domain calls and results
//! into responses. Rules live in `domain`, persistence in `store`.

use std::{collections::HashMap, pin::Pin, sync::Arc, time::Duration};

use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{debug, warn};
use uuid::Uuid;
use waybill_proto::v1::{self as pb, order_service_server::OrderService};
use waybill_service_kit::{
    clock::SharedClock,
    db::{Change, ChangeFeed},
    page_token::PageTokenKey,
    telemetry::TraceContext,
};

use crate::{
    catalog::CatalogCache,
    convert::{event_to_proto, order_to_proto},
    domain::{
        model::NewOrder,
        page_token::{self, PageCursor},
        pricing::price,
        validate::{self, validate_place_order},
    },
    error::OrdersError,
    store::{OrderStore, Placement},
};

/// The Orders gRPC service.
#[derive(Debug, Clone)]
pub struct OrdersApi {
    store: Arc<dyn OrderStore>,
    feed: ChangeFeed,
    clock: SharedClock,
    region: String,
    /// Seals and opens `ListOrders` page tokens.
    page_tokens: PageTokenKey,
    /// `WatchOrder` re-reads this often even without a notification, in case one was missed.
    watch_poll: Duration,
    shutdown: CancellationToken,
    metrics: Arc<OrdersMetrics>,
    catalog: Arc<CatalogCache>,
}

/// The Orders service's Prometheus series (`waybill_orders_*`).
#[derive(Debug, Default)]
pub struct OrdersMetrics {
    placed: prometheus_client::metrics::counter::Counter,
    replayed: prometheus_client::metrics::counter::Counter,
}

impl OrdersMetrics {
    /// Registers the series (names without the registry's prefix).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "placed",
            "Orders placed (new orders written with their dispatch row)",
            self.placed.clone(),
        );
        registry.register(
            "place_replayed",
            "PlaceOrder calls answered with an existing order (same idempotency key and request)",
            self.replayed.clone(),
        );
    }
}

impl OrdersApi {
    /// The service over `store`; `feed` wakes `WatchOrder` streams, `shutdown` ends them.
    pub fn new(
        store: Arc<dyn OrderStore>,
        feed: ChangeFeed,
        clock: SharedClock,
        region: String,
        page_tokens: PageTokenKey,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            feed,
            region,
            page_tokens,
            watch_poll: Duration::from_secs(5),
            catalog: Arc::new(CatalogCache::new(Duration::ZERO, clock.clone())),
            clock,
            shutdown,
            metrics: Arc::default(),
        }
    }

    /// Uses a catalog entry for `lifetime` after reading it (see [`CatalogCache`]).
    pub fn with_catalog_cache(mut self, lifetime: Duration) -> Self {
        self.catalog = Arc::new(CatalogCache::new(lifetime, self.clock.clone()));
        self
    }

    /// Counts into `metrics` (registered by the caller).
    pub fn with_metrics(mut self, metrics: Arc<OrdersMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    async fn place(
        &self,
        request: &pb::PlaceOrderRequest,
    ) -> Result<pb::PlaceOrderResponse, OrdersError> {
        let valid = validate_place_order(request)?;
        let skus: Vec<String> = valid.lines.iter().map(|line| line.sku.clone()).collect();
        let store = &self.store;
        let catalog: HashMap<_, _> = self
            .catalog
            .items(&skus, async |skus| store.catalog_items(skus).await)
            .await?
            .into_iter()
            .map(|item| (item.sku.clone(), item))
            .collect();
        let priced = price(&valid.lines, &catalog)?;
        let trace = TraceContext::current();
        let order = NewOrder {
            id: Uuid::now_v7(),
            idempotency_key: valid.idempotency_key,
            request_hash: request_hash(request),
            customer: valid.customer,
            ship_to: valid.ship_to,
            lines: priced.lines,
            currency_code: priced.currency_code,
            total_minor: priced.total_minor,
            region: self.region.clone(),
            placed_at: self.clock.now(),
            traceparent: trace.traceparent,
            tracestate: trace.tracestate,
        };
        let (order, replayed) = match self.store.place_order(&order).await? {
            Placement::Created(order) => {
                self.metrics.placed.inc();
                debug!(order_id = %order.id, total_minor = order.total_minor, currency = %order.currency_code, "order placed");
                (order, false)
            }
            Placement::Replayed(order) => {
                self.metrics.replayed.inc();
                debug!(order_id = %order.id, "idempotent replay");
                (order, true)
            }
        };
        Ok(pb::PlaceOrderResponse {
            order: Some(order_to_proto(&order)),
            replayed,
        })
    }

    async fn get(&self, request: &pb::GetOrderRequest) -> Result<pb::Order, OrdersError> {
        let id = validate::order_id("order_id", &request.order_id)?;
        let order = self
            .store
            .get_order(id)
            .await?
            .ok_or_else(|| OrdersError::NotFound(id.to_string()))?;
        Ok(order_to_proto(&order))
    }

    async fn list(
        &self,
        request: &pb::ListOrdersRequest,
    ) -> Result<pb::ListOrdersResponse, OrdersError> {
        validate::customer_id(&request.customer_id)?;
        let page_size = validate::page_size(request.page_size)?;
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(page_token::decode(
                &self.page_tokens,
                &request.customer_id,
                &request.page_token,
            )?)
        };
        // One extra row tells whether another page exists.
        let mut orders = self
            .store
            .list_orders(&request.customer_id, after, page_size + 1)
            .await?;
        let more = orders.len() > page_size as usize;
        orders.truncate(page_size as usize);
        let next_page_token = match orders.last() {
            Some(last) if more => page_token::encode(
                &self.page_tokens,
                &request.customer_id,
                PageCursor {
                    placed_at: last.placed_at,
                    id: last.id,
                },
            ),
            _ => String::new(),
        };
        Ok(pb::ListOrdersResponse {
            orders: orders.iter().map(order_to_proto).collect(),
            next_page_token,
        })
    }

    async fn watch(&self, request: &pb::WatchOrderRequest) -> Result<EventStream, OrdersError> {
        let id = validate::order_id("order_id", &request.order_id)?;
        let after_sequence = validate::after_sequence(request.after_sequence)?;
        // Subscribe before reading, so an event committed in between is not missed.
        let changes = self.feed.subscribe();
        let history = self.store.history_after(id, 0).await?;
        if history.is_empty() {
            return Err(OrdersError::NotFound(id.to_string()));
        }
        let (sender, receiver) = mpsc::channel(16);
        let watch = Watch {
            store: self.store.clone(),
            order_id: id,
            last_seq: after_sequence,
            sender,
            poll: self.watch_poll,
        };
        tokio::spawn(watch.run(history, changes, self.shutdown.clone()));
        Ok(Box::pin(ReceiverStream::new(receiver)))
    }
}

/// SHA-256 of the request's protobuf encoding (deterministic for equal messages): equal for a
/// true retry, different for any change in customer, address or lines.
fn request_hash(request: &pb::PlaceOrderRequest) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(b"waybill.v1.PlaceOrderRequest\0");
    hasher.update(request.encode_to_vec());
    hasher.finalize().to_vec()
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::OrderStatusEvent, Status>> + Send>>;

type Reply<T> = Result<Response<T>, Status>;

/// Each RPC is one line: the inner method's [`OrdersError`] becomes a `Status` in one place
/// (`From<OrdersError> for Status`).
#[tonic::async_trait]
impl OrderService for OrdersApi {
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Reply<pb::PlaceOrderResponse> {
        Ok(Response::new(self.place(request.get_ref()).await?))
    }

    async fn get_order(&self, request: Request<pb::GetOrderRequest>) -> Reply<pb::Order> {
        Ok(Response::new(self.get(request.get_ref()).await?))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Reply<pb::ListOrdersResponse> {
        Ok(Response::new(self.list(request.get_ref()).await?))
    }

    type WatchOrderStream = EventStream;

    async fn watch_order(
        &self,
        request: Request<pb::WatchOrderRequest>,
    ) -> Reply<Self::WatchOrderStream> {
        Ok(Response::new(self.watch(request.get_ref()).await?))
    }
}

/// One `WatchOrder` stream: sends what it has not sent yet whenever the order may have changed.
struct Watch {
    store: Arc<dyn OrderStore>,
    order_id: Uuid,
    last_seq: i64,
    sender: mpsc::Sender<Result<pb::OrderStatusEvent, Status>>,
    poll: Duration,
}

impl Watch {
    async fn run(
        mut self,
        history: Vec<crate::domain::model::StatusEvent>,
        mut changes: tokio::sync::broadcast::Receiver<Change>,
        shutdown: CancellationToken,
    ) {
        if !self.send(history).await {
            return;
        }
        let mut poll = tokio::time::interval(self.poll);
        poll.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = self.sender.send(Err(Status::unavailable("server shutting down, watch again"))).await;
                    return;
                }
                () = self.sender.closed() => return,
                change = changes.recv() => match change {
                    Ok(Change::OrderStatus(id)) if id == self.order_id => {}
                    Ok(_) => continue,
                    // Missed some notifications: just look.
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
                _ = poll.tick() => {}
            }
            match self.store.history_after(self.order_id, self.last_seq).await {
                Ok(events) => {
                    if !self.send(events).await {
                        return;
                    }
                }
                Err(error) => {
                    warn!(order_id = %self.order_id, %error, "watch cannot read history");
                    let _ = self
                        .sender
                        .send(Err(Status::unavailable("storage unavailable, watch again")))
                        .await;
                    return;
                }
            }
        }
    }

    /// Sends the events newer than the last one sent; false once the client is gone.
    async fn send(&mut self, events: Vec<crate::domain::model::StatusEvent>) -> bool {
        for event in &events {
            if event.seq <= self.last_seq {
                continue;
            }
            if self.sender.send(Ok(event_to_proto(event))).await.is_err() {
                return false;
            }
            self.last_seq = event.seq;
        }
        true
    }
}
