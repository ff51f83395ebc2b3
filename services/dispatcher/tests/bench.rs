//! `bench drain` runs end to end and its figures are consistent (a smoke test, not a timed one).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use waybill_dispatcher::{
    bench::{DrainOptions, drain},
    testing::TestBroker,
};
use waybill_service_kit::testing::{TestBackend, TestDatabase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drain_reports_drain_and_produce_rates() {
    for backend in [TestBackend::Postgres, TestBackend::Sqlite] {
        let test_db = TestDatabase::create(backend).await;
        let db = test_db.connect().await;
        let broker = TestBroker::start();
        // WAYBILL_BENCH_ORDERS sizes a real measurement (run with --release --nocapture);
        // stay under the mock broker's 5 MiB per partition.
        let orders = std::env::var("WAYBILL_BENCH_ORDERS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1_000);
        // Two dispatchers side by side where leases can run in parallel.
        let dispatchers = if backend == TestBackend::Postgres {
            2
        } else {
            1
        };
        let options = DrainOptions {
            orders,
            batch_size: 200,
            dispatchers,
            ..DrainOptions::default()
        };
        let report = drain(
            &db,
            &broker.kafka_settings(Duration::from_secs(5)),
            broker.topic_creator(),
            &options,
        )
        .await
        .unwrap();
        assert_eq!(report.orders, orders);
        assert_eq!(report.dispatchers, dispatchers);
        assert!(report.drain_orders_per_second > 0.0 && report.produce_messages_per_second > 0.0);
        // Every order relayed, plus the raw copies (at least: on-the-wire duplicates are allowed).
        let on_topic = broker
            .read_topic(&report.topic, 2 * orders, Duration::from_secs(30))
            .await;
        assert_eq!(on_topic.len(), 2 * orders);
        let json = report.to_json();
        assert_eq!(json["orders"], orders);
        assert!(report.to_text().contains("orders/s"));
        println!("{backend:?}\n{}", report.to_text());
    }
}
