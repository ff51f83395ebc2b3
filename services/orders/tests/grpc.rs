//! The Orders service over real gRPC on loopback, against real Postgres (and SQLite where the
//! backend matters).
#![allow(clippy::unwrap_used)]

mod support;

use std::{net::SocketAddr, time::Duration};

use support::{Fixture, append_event, fixture, row_counts};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};
use uuid::Uuid;
use waybill_orders::{OrdersDeps, serve};
use waybill_proto::v1::{self as pb, order_service_client::OrderServiceClient};
use waybill_service_kit::grpc::ServerLimits;
use waybill_test_kit::{
    TestBackend, eventually,
    fixtures::{OrderFixture as _, sample_order},
};

struct Running {
    client: OrderServiceClient<Channel>,
    addr: SocketAddr,
    f: Fixture,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(backend: TestBackend) -> Running {
    let f = fixture(backend).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let deps = OrdersDeps::new(&f.db, "test");
    tokio::spawn(serve(
        listener,
        deps,
        ServerLimits::default(),
        shutdown.clone(),
    ));
    let client = OrderServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Running {
        client,
        addr,
        f,
        shutdown,
    }
}

/// The sample order with two lines (3 mugs at 12.50, a desk lamp at 45.00).
fn request(key: &str) -> pb::PlaceOrderRequest {
    sample_order(key, "GB").with_lines(&[("MUG-001", 3), ("LAMP-DESK", 1)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn place_order_prices_from_the_catalog_and_get_order_reads_it_back() {
    let mut s = start(TestBackend::Postgres).await;
    let response = s
        .client
        .place_order(request("k1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!response.replayed);
    let order = response.order.unwrap();
    let total = order.total.as_ref().unwrap();
    assert_eq!(
        (total.currency_code.as_str(), total.minor_units),
        ("USD", 3 * 1250 + 4500)
    );
    assert_eq!(
        order.lines[0].unit_price.as_ref().unwrap().minor_units,
        1250
    );
    assert_eq!(
        order.lines[0].line_total.as_ref().unwrap().minor_units,
        3750
    );
    assert_eq!(order.lines[1].name, "Desk lamp");
    assert_eq!(order.status(), pb::OrderStatus::Placed);
    assert_eq!(order.region, "test");
    assert_eq!(order.status_history.len(), 1);

    let fetched = s
        .client
        .get_order(pb::GetOrderRequest {
            order_id: order.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, order);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_replays_the_same_request_and_refuses_a_different_one() {
    for backend in [TestBackend::Postgres, TestBackend::Sqlite] {
        let mut s = start(backend).await;
        let first = s
            .client
            .place_order(request("k1"))
            .await
            .unwrap()
            .into_inner();
        let again = s
            .client
            .place_order(request("k1"))
            .await
            .unwrap()
            .into_inner();
        assert!(again.replayed, "{backend:?}");
        assert_eq!(
            again.order, first.order,
            "{backend:?}: the original order, unchanged"
        );

        let mut changed = request("k1");
        changed.lines[0].quantity = 4;
        let status = s.client.place_order(changed).await.unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists, "{backend:?}");
        assert!(status.message().contains("\"k1\""), "{}", status.message());
        assert!(
            status.message().contains("new idempotency key"),
            "{}",
            status.message()
        );
        assert_eq!(row_counts(&s.f.db).await, (1, 2, 1, 1), "{backend:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_place_orders_with_one_key_create_one_order() {
    let s = start(TestBackend::Postgres).await;
    let calls = (0..20).map(|_| {
        let mut client = s.client.clone();
        tokio::spawn(async move {
            client
                .place_order(request("shared"))
                .await
                .map(|r| r.into_inner())
        })
    });
    let responses: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(responses.iter().filter(|r| !r.replayed).count(), 1);
    let id = &responses[0].order.as_ref().unwrap().id;
    assert!(
        responses
            .iter()
            .all(|r| &r.order.as_ref().unwrap().id == id)
    );
    assert_eq!(row_counts(&s.f.db).await, (1, 2, 1, 1));
}

/// Every validation rule: INVALID_ARGUMENT naming the field, and nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_request_is_refused_with_the_field_and_changes_nothing() {
    let mut s = start(TestBackend::Postgres).await;
    type Breaks = fn(&mut pb::PlaceOrderRequest);
    let cases: Vec<(&str, Breaks)> = vec![
        ("idempotency_key: is required", |r| {
            r.idempotency_key.clear()
        }),
        ("idempotency_key: must be at most 255", |r| {
            r.idempotency_key = "k".repeat(256)
        }),
        ("customer: is required", |r| r.customer = None),
        ("customer.id: is required", |r| {
            r.customer.as_mut().unwrap().id.clear()
        }),
        ("customer.name: must be at most 200", |r| {
            r.customer.as_mut().unwrap().name = "n".repeat(201)
        }),
        ("customer.email: must look like", |r| {
            r.customer.as_mut().unwrap().email = "not-an-email".into()
        }),
        ("customer.phone: may contain only", |r| {
            r.customer.as_mut().unwrap().phone = "ring ring".into()
        }),
        ("shipping_address: is required", |r| {
            r.shipping_address = None
        }),
        ("shipping_address.line1: is required", |r| {
            r.shipping_address.as_mut().unwrap().line1.clear()
        }),
        ("shipping_address.city: must not contain control", |r| {
            r.shipping_address.as_mut().unwrap().city = "Lon\0don".into()
        }),
        ("shipping_address.postal_code: must be at most 20", |r| {
            r.shipping_address.as_mut().unwrap().postal_code = "9".repeat(21)
        }),
        (
            "shipping_address.country_code: \"UK\" is not an ISO 3166-1 alpha-2",
            |r| r.shipping_address.as_mut().unwrap().country_code = "UK".into(),
        ),
        ("lines: must have 1 to 100 lines, got 0", |r| {
            r.lines.clear()
        }),
        ("lines: must have 1 to 100 lines, got 101", |r| {
            r.lines = (0..101)
                .map(|i| pb::LineItem {
                    sku: format!("S{i}"),
                    quantity: 1,
                })
                .collect()
        }),
        ("lines[1].quantity: must be 1 to 10000, got 0", |r| {
            r.lines[1].quantity = 0
        }),
        ("lines[0].quantity: must be 1 to 10000, got 10001", |r| {
            r.lines[0].quantity = 10_001
        }),
        ("lines[1].sku: is required", |r| r.lines[1].sku.clear()),
        ("lines[1].sku: \"MUG-001\" is already on lines[0]", |r| {
            r.lines[1].sku = "MUG-001".into()
        }),
        ("lines[1].sku: \"NO-SUCH-SKU\" is not in the catalog", |r| {
            r.lines[1].sku = "NO-SUCH-SKU".into()
        }),
        (
            "lines[1].sku: \"TEA-EARL\" is priced in EUR but lines[0] is in USD",
            |r| r.lines[1].sku = "TEA-EARL".into(),
        ),
    ];
    for (expected, breaks) in cases {
        let mut bad = request("bad");
        breaks(&mut bad);
        let status = s.client.place_order(bad).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{expected}: {status:?}"
        );
        assert!(
            status.message().starts_with(expected),
            "expected {expected:?}, got {:?}",
            status.message()
        );
    }
    assert_eq!(row_counts(&s.f.db).await, (0, 0, 0, 0));
    // The largest valid order still fits: 10,000 gold watches.
    let mut big = request("big");
    big.lines = vec![pb::LineItem {
        sku: "WATCH-GOLD".into(),
        quantity: 10_000,
    }];
    let order = s
        .client
        .place_order(big)
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(order.total.unwrap().minor_units, 12_500_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_order_tells_malformed_from_unknown_ids() {
    let mut s = start(TestBackend::Postgres).await;
    let status = s
        .client
        .get_order(pb::GetOrderRequest {
            order_id: "42".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("order_id: \"42\" is not an order id"),
        "{}",
        status.message()
    );
    let status = s
        .client
        .get_order(pb::GetOrderRequest {
            order_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let unknown = Uuid::now_v7().to_string();
    let status = s
        .client
        .get_order(pb::GetOrderRequest {
            order_id: unknown.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), format!("order {unknown} not found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_orders_walks_every_page_with_tokens() {
    let mut s = start(TestBackend::Postgres).await;
    let mut placed = Vec::new();
    for i in 0..7 {
        let order = s
            .client
            .place_order(request(&format!("k{i}")))
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap();
        placed.push(order.id);
    }
    let other = request("other-customer").with_customer_id("cust-2");
    s.client.place_order(other).await.unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = s
            .client
            .list_orders(pb::ListOrdersRequest {
                customer_id: "cust-1".into(),
                page_size: 3,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.orders.len() <= 3);
        seen.extend(page.orders.into_iter().map(|o| o.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    placed.reverse();
    assert_eq!(seen, placed, "newest first, each exactly once");

    for (request, field) in [
        (
            pb::ListOrdersRequest {
                customer_id: String::new(),
                page_size: 0,
                page_token: String::new(),
            },
            "customer_id",
        ),
        (
            pb::ListOrdersRequest {
                customer_id: "cust-1".into(),
                page_size: 101,
                page_token: String::new(),
            },
            "page_size",
        ),
        (
            pb::ListOrdersRequest {
                customer_id: "cust-1".into(),
                page_size: 0,
                page_token: "garbage".into(),
            },
            "page_token",
        ),
    ] {
        let status = s.client.list_orders(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with(field), "{}", status.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_order_streams_the_history_then_each_new_event() {
    for backend in [TestBackend::Postgres, TestBackend::Sqlite] {
        let mut s = start(backend).await;
        let order = s
            .client
            .place_order(request("w1"))
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap();
        let id: Uuid = order.id.parse().unwrap();
        let mut stream = s
            .client
            .watch_order(pb::WatchOrderRequest {
                order_id: order.id.clone(),
                after_sequence: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(
            (first.sequence, first.status()),
            (1, pb::OrderStatus::Placed)
        );

        // Appended by "another process": on Postgres a second connection pool (so the
        // notification must travel through NOTIFY), on SQLite the shared in-process feed.
        let writer = match backend {
            TestBackend::Postgres => s.f.test_db.connect().await,
            TestBackend::Sqlite => s.f.db.clone(),
        };
        append_event(
            &writer,
            id,
            pb::OrderStatus::SentToPartner,
            "contoso",
            support::at(1),
        )
        .await;
        // Well under the 5 s fallback poll: this proves the notification path.
        let next = tokio::time::timeout(Duration::from_secs(2), stream.next())
            .await
            .expect("the new event arrives without waiting for the poll")
            .unwrap()
            .unwrap();
        assert_eq!(
            (next.sequence, next.status()),
            (2, pb::OrderStatus::SentToPartner),
            "{backend:?}"
        );
        assert_eq!(next.partner_id, "contoso");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_order_refuses_unknown_and_malformed_orders() {
    let mut s = start(TestBackend::Sqlite).await;
    let status = s
        .client
        .watch_order(pb::WatchOrderRequest {
            order_id: Uuid::now_v7().to_string(),
            after_sequence: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = s
        .client
        .watch_order(pb::WatchOrderRequest {
            order_id: "nope".into(),
            after_sequence: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving_until_shutdown() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let s = start(TestBackend::Sqlite).await;
    let channel = Channel::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let status = health
        .check(HealthCheckRequest {
            service: "waybill.v1.OrderService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status(), ServingStatus::Serving);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_watch_streams_with_unavailable_and_health_not_serving() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut s = start(TestBackend::Sqlite).await;
    let order = s
        .client
        .place_order(request("bye"))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let mut stream = s
        .client
        .watch_order(pb::WatchOrderRequest {
            order_id: order.id,
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.next().await.unwrap().unwrap().sequence, 1);
    let channel = Channel::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel);

    s.shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream ends promptly on shutdown")
        .unwrap()
        .unwrap_err();
    assert_eq!(ended.code(), Code::Unavailable);
    assert!(
        ended.message().contains("watch again"),
        "{}",
        ended.message()
    );
    // The server drains: health (on an existing connection) turns NOT_SERVING or the
    // connection closes; either way, promptly, nobody is told SERVING any more. (The stream
    // and the health reporter react to the same signal on different tasks, so the first
    // check may still race the reporter.)
    eventually(
        Duration::from_secs(5),
        "health NOT_SERVING or the connection closed after shutdown",
        || {
            let mut health = health.clone();
            async move {
                match health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                {
                    Ok(response) => response.into_inner().status() == ServingStatus::NotServing,
                    Err(status) => status.code() != Code::Ok,
                }
            }
        },
    )
    .await;
}
