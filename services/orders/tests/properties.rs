//! Property tests of Orders' request validators and page-token parser, and of the whole service
//! over gRPC on both backends: whatever a caller sends, no panic, no INTERNAL/UNKNOWN, and a
//! status message of bounded size.
//!
//! The normal test suite runs a short bounded number of cases; a longer run:
//!
//! ```text
//! PROPTEST_CASES=20000 cargo test -p waybill-orders --release --test properties
//! ```
#![allow(clippy::unwrap_used)]

mod support;

use proptest::{prelude::*, test_runner::TestRunner};
use tonic::{Code, Status};
use waybill_orders::{
    OrdersDeps,
    domain::{page_token, validate::validate_place_order},
    error::OrdersError,
    serve,
};
use waybill_proto::v1::{self as pb, order_service_client::OrderServiceClient};
use waybill_service_kit::{grpc::ServerLimits, page_token::PageTokenKey, text::MAX_MESSAGE_BYTES};
use waybill_test_kit::TestBackend;

/// Cases per property: `PROPTEST_CASES`, or a short run by default.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Text as an attacker sends it: ordinary, control characters, odd Unicode, very long, or a
/// valid-looking value.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => ".{0,40}",
        2 => "[\\x00-\\x1f\\x7f\u{80}-\u{9f}a-zA-Z0-9@. +-]{0,20}",
        1 => "[\u{202e}\u{feff}\u{10ffff}\u{e000}é\"\\\\]{0,12}",
        1 => (0usize..5_000, any::<char>()).prop_map(|(n, c)| c.to_string().repeat(n)),
        2 => prop_oneof![
            Just("GB".to_owned()),
            Just("ada@example.com".to_owned()),
            Just("MUG-001".to_owned()),
            Just("0190f2c4-0000-7000-8000-000000000000".to_owned()),
        ],
    ]
}

fn place_order_request() -> impl Strategy<Value = pb::PlaceOrderRequest> {
    let customer = (
        hostile_text(),
        hostile_text(),
        hostile_text(),
        hostile_text(),
    )
        .prop_map(|(id, name, email, phone)| pb::Customer {
            id,
            name,
            email,
            phone,
        });
    let address = proptest::collection::vec(hostile_text(), 6).prop_map(|f| pb::Address {
        line1: f[0].clone(),
        line2: f[1].clone(),
        city: f[2].clone(),
        region: f[3].clone(),
        postal_code: f[4].clone(),
        country_code: f[5].clone(),
    });
    let line = (hostile_text(), any::<u32>()).prop_map(|(sku, quantity)| pb::LineItem {
        sku,
        quantity: quantity % 20_000,
    });
    (
        hostile_text(),
        proptest::option::weighted(0.9, customer),
        proptest::option::weighted(0.9, address),
        proptest::collection::vec(line, 0..4),
    )
        .prop_map(|(idempotency_key, customer, shipping_address, lines)| {
            pb::PlaceOrderRequest {
                idempotency_key,
                customer,
                shipping_address,
                lines,
            }
        })
}

fn assert_acceptable(status: &Status) {
    assert!(
        !matches!(status.code(), Code::Internal | Code::Unknown),
        "{:?}: {}",
        status.code(),
        status.message()
    );
    assert!(
        status.message().len() <= MAX_MESSAGE_BYTES,
        "{} bytes",
        status.message().len()
    );
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn the_place_order_validator_never_panics_and_refuses_briefly(request in place_order_request()) {
        if let Err(invalid) = validate_place_order(&request) {
            let status = Status::from(OrdersError::from(invalid));
            prop_assert_eq!(status.code(), Code::InvalidArgument);
            prop_assert!(status.message().len() <= MAX_MESSAGE_BYTES);
        }
    }

    #[test]
    fn the_page_token_parser_refuses_anything_it_did_not_seal(
        customer in hostile_text(),
        token in prop_oneof![hostile_text(), "[A-Za-z0-9_-]{0,120}"],
    ) {
        let key = PageTokenKey::from_bytes(&[3; 32]).unwrap();
        let error = page_token::decode(&key, &customer, &token).expect_err("not sealed by us");
        prop_assert_eq!(&error.field, "page_token");
        let status = Status::from(OrdersError::from(error));
        prop_assert!(status.message().len() <= MAX_MESSAGE_BYTES);
    }

    #[test]
    fn an_altered_sealed_token_is_refused(micros in 0i64..4_000_000_000_000_000, flip in 0usize..56, bit in 0u8..8) {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        let key = PageTokenKey::from_bytes(&[3; 32]).unwrap();
        let cursor = page_token::PageCursor {
            placed_at: chrono::DateTime::from_timestamp_micros(micros).unwrap(),
            id: uuid::Uuid::now_v7(),
        };
        let token = page_token::encode(&key, "c", cursor);
        prop_assert_eq!(page_token::decode(&key, "c", &token), Ok(cursor));
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        let at = flip % bytes.len();
        bytes[at] ^= 1 << bit;
        prop_assert!(page_token::decode(&key, "c", &URL_SAFE_NO_PAD.encode(bytes)).is_err());
    }
}

/// The whole service: arbitrary PlaceOrder, GetOrder, WatchOrder and ListOrders requests over
/// real gRPC, on Postgres and SQLite, never get INTERNAL/UNKNOWN or an unbounded message.
#[test]
fn the_service_never_answers_hostile_requests_with_an_internal_error() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for backend in [TestBackend::Postgres, TestBackend::Sqlite] {
        let f = runtime.block_on(support::fixture(backend));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let client = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(serve(
                listener,
                OrdersDeps::new(&f.db, "test"),
                ServerLimits::default(),
                shutdown.clone(),
            ));
            OrderServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap()
        });
        let strategy = (
            place_order_request(),
            hostile_text(),
            hostile_text(),
            any::<u32>(),
        );
        let mut runner = TestRunner::new(config(24));
        runner
            .run(&strategy, |(place, text, token, page_size)| {
                let mut client = client.clone();
                runtime.block_on(async {
                    if let Err(status) = client.place_order(place).await {
                        assert_acceptable(&status);
                    }
                    if let Err(status) = client
                        .get_order(pb::GetOrderRequest {
                            order_id: text.clone(),
                        })
                        .await
                    {
                        assert_acceptable(&status);
                    }
                    // A stream that opens (an existing order) is dropped at once.
                    if let Err(status) = client
                        .watch_order(pb::WatchOrderRequest {
                            order_id: text.clone(),
                            after_sequence: i64::from(page_size % 4),
                        })
                        .await
                    {
                        assert_acceptable(&status);
                    }
                    if let Err(status) = client
                        .list_orders(pb::ListOrdersRequest {
                            customer_id: text,
                            page_size: page_size % 200,
                            page_token: token,
                        })
                        .await
                    {
                        assert_acceptable(&status);
                    }
                });
                Ok(())
            })
            .unwrap_or_else(|failure| panic!("{backend:?}: {failure}"));
        shutdown.cancel();
        drop(f);
    }
}
