//! Orders as an attacker tries it, over real gRPC on loopback, on both backends: oversized
//! fields get a short readable INVALID_ARGUMENT (never a trailer too big for the client), a
//! control character in any text field is INVALID_ARGUMENT naming the field on Postgres and on
//! SQLite alike, and page tokens that were forged, altered or carry absurd times are
//! INVALID_ARGUMENT, never INTERNAL or OK.
#![allow(clippy::unwrap_used)]

mod support;

use support::{Fixture, fixture, row_counts};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, transport::Channel};
use uuid::Uuid;
use waybill_orders::{OrdersDeps, serve};
use waybill_proto::v1::{self as pb, order_service_client::OrderServiceClient};
use waybill_service_kit::{grpc::ServerLimits, page_token::PageTokenKey, text::MAX_MESSAGE_BYTES};
use waybill_test_kit::{TestBackend, fixtures::sample_order};

const BACKENDS: [TestBackend; 2] = [TestBackend::Postgres, TestBackend::Sqlite];

struct Running {
    client: OrderServiceClient<Channel>,
    key: PageTokenKey,
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
    let key = PageTokenKey::from_bytes(&[9; 32]).unwrap();
    let deps = OrdersDeps {
        page_tokens: key.clone(),
        ..OrdersDeps::new(&f.db, "test")
    };
    tokio::spawn(serve(
        listener,
        deps,
        ServerLimits::default(),
        shutdown.clone(),
    ));
    // A standard client: it refuses status trailers over 16 KiB, as the attacker's did.
    let client = OrderServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_encoding_message_size(8 << 20);
    Running {
        client,
        key,
        f,
        shutdown,
    }
}

/// INVALID_ARGUMENT for `field`, with a message a person can read in full.
fn assert_invalid(status: &Status, field: &str, context: &str) {
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "{context}: {:?}",
        status.message()
    );
    assert!(
        status.message().starts_with(&format!("{field}: ")),
        "{context}: {:?}",
        status.message()
    );
    assert!(
        status.message().len() <= MAX_MESSAGE_BYTES,
        "{context}: {} bytes",
        status.message().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_ids_and_country_codes_get_a_short_readable_invalid_argument() {
    for backend in BACKENDS {
        let mut s = start(backend).await;
        // Just under the request size limit: validated and refused with a bounded quote.
        let long = "x".repeat(60 * 1024);
        let status = s
            .client
            .get_order(pb::GetOrderRequest {
                order_id: long.clone(),
            })
            .await
            .unwrap_err();
        assert_invalid(&status, "order_id", "get_order");
        assert!(
            status.message().contains("… (61440 characters)"),
            "{}",
            status.message()
        );
        let status = s
            .client
            .watch_order(pb::WatchOrderRequest {
                order_id: long.clone(),
                after_sequence: 0,
            })
            .await
            .unwrap_err();
        assert_invalid(&status, "order_id", "watch_order");
        let mut bad = sample_order("long-country", "GB");
        bad.shipping_address.as_mut().unwrap().country_code = long.clone();
        let status = s.client.place_order(bad).await.unwrap_err();
        assert_invalid(&status, "shipping_address.country_code", "place_order");
        assert!(status.message().len() < 300, "{}", status.message());
        let status = s
            .client
            .list_orders(pb::ListOrdersRequest {
                customer_id: long.clone(),
                page_size: 0,
                page_token: String::new(),
            })
            .await
            .unwrap_err();
        assert_invalid(&status, "customer_id", "list_orders");

        // The 4 MiB id of the report: refused before decoding, readably, not with the
        // client's "metadata size exceeds hard limit".
        let status = s
            .client
            .get_order(pb::GetOrderRequest {
                order_id: "x".repeat(4 << 20),
            })
            .await
            .unwrap_err();
        assert_ne!(status.code(), Code::Internal);
        assert!(
            status.message().contains("message length too large"),
            "{:?} {}",
            status.code(),
            status.message()
        );
        assert!(status.message().len() < 300, "{}", status.message());
        assert_eq!(row_counts(&s.f.db).await, (0, 0, 0, 0), "{backend:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_character_in_any_text_field_is_invalid_argument_on_both_backends() {
    type Breaks = fn(&mut pb::PlaceOrderRequest, &str);
    let fields: Vec<(&str, Breaks)> = vec![
        ("idempotency_key", |r, v| r.idempotency_key = v.into()),
        ("customer.id", |r, v| {
            r.customer.as_mut().unwrap().id = v.into()
        }),
        ("customer.name", |r, v| {
            r.customer.as_mut().unwrap().name = v.into()
        }),
        ("customer.email", |r, v| {
            r.customer.as_mut().unwrap().email = format!("a{v}@example.com")
        }),
        ("customer.phone", |r, v| {
            r.customer.as_mut().unwrap().phone = format!("1{v}")
        }),
        ("shipping_address.line1", |r, v| {
            r.shipping_address.as_mut().unwrap().line1 = v.into()
        }),
        ("shipping_address.line2", |r, v| {
            r.shipping_address.as_mut().unwrap().line2 = v.into()
        }),
        ("shipping_address.city", |r, v| {
            r.shipping_address.as_mut().unwrap().city = v.into()
        }),
        ("shipping_address.region", |r, v| {
            r.shipping_address.as_mut().unwrap().region = v.into()
        }),
        ("shipping_address.postal_code", |r, v| {
            r.shipping_address.as_mut().unwrap().postal_code = v.into()
        }),
        ("shipping_address.country_code", |r, v| {
            r.shipping_address.as_mut().unwrap().country_code = v.into()
        }),
        ("lines[0].sku", |r, v| r.lines[0].sku = v.into()),
    ];
    for backend in BACKENDS {
        let mut s = start(backend).await;
        for control in ["a\0b", "G\u{1b}", "x\u{7f}"] {
            for (field, breaks) in &fields {
                let mut bad = sample_order("controls", "GB");
                breaks(&mut bad, control);
                let status = s.client.place_order(bad).await.unwrap_err();
                assert_invalid(&status, field, &format!("{backend:?} {control:?}"));
            }
            for customer_id in [control.to_owned(), format!("cust-1{control}")] {
                let status = s
                    .client
                    .list_orders(pb::ListOrdersRequest {
                        customer_id,
                        page_size: 0,
                        page_token: String::new(),
                    })
                    .await
                    .unwrap_err();
                assert_invalid(&status, "customer_id", &format!("{backend:?}"));
                assert!(
                    status.message().contains("control characters"),
                    "{}",
                    status.message()
                );
            }
            for order_id in [control.to_owned(), format!("{}\0", Uuid::now_v7())] {
                let status = s
                    .client
                    .get_order(pb::GetOrderRequest { order_id })
                    .await
                    .unwrap_err();
                assert_invalid(&status, "order_id", &format!("{backend:?}"));
            }
        }
        assert_eq!(row_counts(&s.f.db).await, (0, 0, 0, 0), "{backend:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_altered_and_out_of_range_page_tokens_are_invalid_argument_on_both_backends() {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    for backend in BACKENDS {
        let mut s = start(backend).await;
        for i in 0..3 {
            s.client
                .place_order(sample_order(&format!("k{i}"), "GB"))
                .await
                .unwrap();
        }
        let list = |token: &str| pb::ListOrdersRequest {
            customer_id: "cust-1".into(),
            page_size: 1,
            page_token: token.to_owned(),
        };
        let page = s.client.list_orders(list("")).await.unwrap().into_inner();
        let genuine = page.next_page_token;
        assert!(!genuine.is_empty());
        let second = s.client.list_orders(list(&genuine)).await.unwrap();
        assert_eq!(second.into_inner().orders.len(), 1, "genuine token works");

        let mut altered = URL_SAFE_NO_PAD.decode(&genuine).unwrap();
        altered[3] ^= 0x40;
        let altered = URL_SAFE_NO_PAD.encode(altered);
        // The format the report forged: plain base64 of v1|micros|uuid|customer.
        let forged_far =
            URL_SAFE_NO_PAD.encode(format!("v1|{}|{}|cust-1", i64::MAX / 2, Uuid::now_v7()));
        // Sealed with the server's own key (as if it leaked) but with a time far outside what
        // the stores represent: the bound, not only the tag, refuses it.
        let mut far = (i64::MAX / 2).to_be_bytes().to_vec();
        far.extend_from_slice(Uuid::now_v7().as_bytes());
        let sealed_far = s.key.seal("waybill.orders.ListOrders.v2", b"cust-1", &far);
        let other_key = PageTokenKey::from_bytes(&[1; 32]).unwrap();
        let mut payload = 0i64.to_be_bytes().to_vec();
        payload.extend_from_slice(Uuid::now_v7().as_bytes());
        let other_server = other_key.seal("waybill.orders.ListOrders.v2", b"cust-1", &payload);
        for (what, token) in [
            ("altered", altered),
            ("forged far time", forged_far),
            ("sealed far time", sealed_far),
            ("another server's key", other_server),
            ("garbage", "garbage\0".to_owned()),
            ("huge", "A".repeat(60_000)),
        ] {
            let status = s.client.list_orders(list(&token)).await.unwrap_err();
            assert_invalid(&status, "page_token", &format!("{backend:?} {what}"));
        }
        // A genuine token for another customer is refused too.
        let mut other = list(&genuine);
        other.customer_id = "cust-2".into();
        let status = s.client.list_orders(other).await.unwrap_err();
        assert_invalid(
            &status,
            "page_token",
            &format!("{backend:?} other customer"),
        );
    }
}
