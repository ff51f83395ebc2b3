//! `waybill catalog import` as a process against Orders over TLS with an operator's API key,
//! on Postgres and SQLite, from a fresh (unseeded) database: a generated 10,000-item CSV is
//! loaded and an order placed against it is priced from it; a file with bad rows at known lines
//! is refused naming each line and rule, and the catalog is unchanged; a dry run prints the
//! change and changes nothing; a storefront's key may list but not import.
#![allow(clippy::unwrap_used)]

use std::{fmt::Write as _, net::SocketAddr, path::Path, process::Output, sync::Arc};

use tokio_util::sync::CancellationToken;
use tonic::{Request, metadata::MetadataValue};
use waybill_orders::{OrdersDeps, serve};
use waybill_proto::v1::order_service_client::OrderServiceClient;
use waybill_service_kit::{
    grpc::ServerLimits,
    security::{Credentials, ReloadableTls, ServerSecurity, auth::hash_api_key},
};
use waybill_test_kit::{
    TestBackend, TestDatabase,
    fixtures::{OrderFixture, sample_order},
    tls::TestPki,
};

const STOREFRONT_KEY: &str = "sf_import_3a9e1c";
const OPERATOR_KEY: &str = "op_import_b7d204";

/// Orders with no catalog cache on a fresh database; stops when the token is dropped.
async fn start(
    backend: TestBackend,
    pki: &TestPki,
) -> (SocketAddr, CancellationToken, TestDatabase) {
    let credentials = Credentials::parse(&format!(
        r#"{{"callers":[
            {{"name":"shop","role":"storefront","api_key_sha256":"{}"}},
            {{"name":"ops","role":"operator","api_key_sha256":"{}"}}
        ]}}"#,
        hash_api_key(STOREFRONT_KEY),
        hash_api_key(OPERATOR_KEY),
    ))
    .unwrap();
    let security = ServerSecurity {
        tls: Some(ReloadableTls::load(pki.server_files(false)).unwrap()),
        credentials: Some(Arc::new(credentials)),
        rate_limit: None,
    };
    let test_db = TestDatabase::create(backend).await;
    let db = test_db.connect().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let deps = OrdersDeps {
        catalog_cache: std::time::Duration::ZERO,
        ..OrdersDeps::new(&db, "test")
    };
    let limits = ServerLimits {
        security,
        ..ServerLimits::default()
    };
    tokio::spawn(serve(listener, deps, limits, shutdown.clone()));
    (addr, shutdown, test_db)
}

/// Runs `waybill catalog ARGS` against `addr` with `key`.
async fn waybill(addr: SocketAddr, ca: &Path, key: &str, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_waybill"));
    command
        .arg("catalog")
        .args(args)
        .arg("--orders")
        .arg(addr.to_string())
        .arg("--tls-ca")
        .arg(ca)
        .env("WAYBILL_API_KEY", key)
        .env_remove("WAYBILL_ORDERS")
        .env_remove("WAYBILL_TLS_CA");
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn import_round_trip(backend: TestBackend) {
    let pki = TestPki::new();
    let (addr, shutdown, _db) = start(backend, &pki).await;
    let _stop = shutdown.drop_guard();
    let dir = pki.dir.clone();
    let ca = dir.join("catalog-ca.pem");
    std::fs::write(&ca, &pki.ca_cert).unwrap();

    let listed = waybill(addr, &ca, OPERATOR_KEY, &["list"]).await;
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(listed.stdout.is_empty(), "fresh: {}", text(&listed.stdout));

    // 10,000 items, one with a quoted name holding a comma.
    let mut csv = String::from("sku,name,price_minor,currency\n");
    for i in 0..10_000 {
        writeln!(csv, "SKU-{i:05},\"Product {i}, boxed\",{},EUR", 100 + i).unwrap();
    }
    let file = dir.join("catalog.csv");
    std::fs::write(&file, &csv).unwrap();
    let file = file.to_str().unwrap();
    let loaded = waybill(addr, &ca, OPERATOR_KEY, &["import", file]).await;
    assert!(loaded.status.success(), "{}", text(&loaded.stderr));
    assert!(
        text(&loaded.stdout).contains("10000 row(s): 10000 created, 0 changed, 0 unchanged"),
        "{}",
        text(&loaded.stdout)
    );

    // An order against it is priced from it.
    let channel = tonic::transport::Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(pki.client_config(None))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = Request::new(
        sample_order("import-1", "DE").with_lines(&[("SKU-00042", 2), ("SKU-09000", 1)]),
    );
    let bearer: MetadataValue<_> = format!("Bearer {STOREFRONT_KEY}").parse().unwrap();
    request.metadata_mut().insert("authorization", bearer);
    let order = OrderServiceClient::new(channel)
        .place_order(request)
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let total = order.total.unwrap();
    assert_eq!(
        (total.minor_units, total.currency_code.as_str()),
        (2 * 142 + 9_100, "EUR")
    );
    assert_eq!(order.lines[0].name, "Product 42, boxed");

    let before = waybill(addr, &ca, STOREFRONT_KEY, &["list", "--include-retired"]).await;
    assert!(before.status.success(), "{}", text(&before.stderr));
    // A header line, then one line per item.
    assert_eq!(text(&before.stdout).lines().count(), 10_001);

    // Bad rows at lines 3, 5 and 6 (and good ones around them): each named, nothing applied.
    let bad = dir.join("bad.csv");
    std::fs::write(
        &bad,
        "sku,name,price_minor,currency\n\
         SKU-00001,Changed,1,EUR\n\
         SKU-00002,Changed,-3,EUR\n\
         NEW-1,New,5,EUR\n\
         NEW-2,New,5,eur\n\
         NEW 3,New,5,EUR\n",
    )
    .unwrap();
    let refused = waybill(addr, &ca, OPERATOR_KEY, &["import", bad.to_str().unwrap()]).await;
    assert_eq!(refused.status.code(), Some(1));
    let errors = text(&refused.stderr);
    assert!(
        errors.contains("line 3: price_minor \"-3\": must be 0 or more"),
        "{errors}"
    );
    assert!(errors.contains("line 5: currency \"eur\""), "{errors}");
    assert!(errors.contains("line 6: sku \"NEW 3\""), "{errors}");
    assert!(errors.contains("3 bad row(s)"), "{errors}");

    // A dry run prints the change and applies nothing.
    let change = dir.join("change.jsonl");
    std::fs::write(
        &change,
        "{\"sku\":\"SKU-00001\",\"name\":\"Product 1, boxed\",\"price_minor\":999,\"currency\":\"EUR\"}\n",
    )
    .unwrap();
    let change = change.to_str().unwrap();
    let plan = waybill(addr, &ca, OPERATOR_KEY, &["import", change, "--dry-run"]).await;
    assert!(plan.status.success(), "{}", text(&plan.stderr));
    let printed = text(&plan.stdout);
    assert!(
        printed.contains("would change SKU-00001: price 101 EUR -> 999 EUR"),
        "{printed}"
    );
    assert!(printed.contains("dry run"), "{printed}");

    // A storefront may not import.
    let denied = waybill(addr, &ca, STOREFRONT_KEY, &["import", change]).await;
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        text(&denied.stderr).contains("PERMISSION_DENIED"),
        "{}",
        text(&denied.stderr)
    );

    let after = waybill(addr, &ca, OPERATOR_KEY, &["list", "--include-retired"]).await;
    assert_eq!(
        text(&after.stdout),
        text(&before.stdout),
        "catalog unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_on_postgres() {
    import_round_trip(TestBackend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_on_sqlite() {
    import_round_trip(TestBackend::Sqlite).await;
}
