//! The catalog service over real TLS gRPC on loopback, on Postgres and SQLite, from a fresh
//! (unseeded) database: 10,000 items loaded in one all-or-nothing call, then an order placed
//! against them and priced from them; a batch with a bad item changes nothing; a dry run
//! changes nothing; a retired SKU is refused by PlaceOrder and listed only when asked; a
//! storefront may list but not change the catalog.
#![allow(clippy::unwrap_used)]

use std::{net::SocketAddr, sync::Arc};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tonic::{
    Code, Request,
    metadata::MetadataValue,
    transport::{Channel, ClientTlsConfig},
};
use waybill_orders::{OrdersDeps, serve};
use waybill_proto::v1::{
    self as pb, catalog_service_client::CatalogServiceClient,
    order_service_client::OrderServiceClient,
};
use waybill_service_kit::{
    grpc::ServerLimits,
    security::{Credentials, ReloadableTls, ServerSecurity},
};
use waybill_test_kit::{
    TestBackend, TestDatabase,
    fixtures::{OrderFixture, sample_order},
    tls::TestPki,
};

const STOREFRONT_KEY: &str = "sf_catalog_5d2e8a";
const OPERATOR_KEY: &str = "op_catalog_7c41b9";

struct Server {
    addr: SocketAddr,
    pki: TestPki,
    shutdown: CancellationToken,
    _db: TestDatabase,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn sha(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Orders on a fresh, migrated, unseeded database, with no catalog cache.
async fn start(backend: TestBackend) -> Server {
    let pki = TestPki::new();
    let credentials = Credentials::parse(&format!(
        r#"{{"callers":[
            {{"name":"shop","role":"storefront","api_key_sha256":"{}"}},
            {{"name":"ops","role":"operator","api_key_sha256":"{}"}}
        ]}}"#,
        sha(STOREFRONT_KEY),
        sha(OPERATOR_KEY),
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
    tokio::spawn(serve(
        listener,
        deps,
        ServerLimits {
            security,
            ..ServerLimits::default()
        },
        shutdown.clone(),
    ));
    Server {
        addr,
        pki,
        shutdown,
        _db: test_db,
    }
}

async fn channel(addr: SocketAddr, tls: ClientTlsConfig) -> Channel {
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {key}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

fn item(sku: &str, price_minor: i64, currency: &str) -> pb::CatalogItem {
    pb::CatalogItem {
        sku: sku.to_owned(),
        name: format!("Product {sku}"),
        price_minor,
        currency_code: currency.to_owned(),
        retired: false,
    }
}

/// Every item (retired too), page by page, as `key`.
async fn all_items(client: &mut CatalogServiceClient<Channel>, key: &str) -> Vec<pb::CatalogItem> {
    let mut items = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_catalog_items(with_key(
                pb::ListCatalogItemsRequest {
                    page_size: 1000,
                    page_token: page_token.clone(),
                    include_retired: true,
                },
                key,
            ))
            .await
            .unwrap()
            .into_inner();
        items.extend(page.items);
        if page.next_page_token.is_empty() {
            return items;
        }
        page_token = page.next_page_token;
    }
}

async fn upsert(
    client: &mut CatalogServiceClient<Channel>,
    items: Vec<pb::CatalogItem>,
    dry_run: bool,
) -> Result<pb::UpsertCatalogItemsResponse, tonic::Status> {
    client
        .upsert_catalog_items(with_key(
            pb::UpsertCatalogItemsRequest { items, dry_run },
            OPERATOR_KEY,
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn catalog_round_trip(backend: TestBackend) {
    let s = start(backend).await;
    let ch = channel(s.addr, s.pki.client_config(None)).await;
    let mut catalog = CatalogServiceClient::new(ch.clone());
    let mut orders = OrderServiceClient::new(ch);
    assert!(
        all_items(&mut catalog, OPERATOR_KEY).await.is_empty(),
        "fresh"
    );

    // 10,000 items in one call, all or nothing.
    let items: Vec<_> = (0..10_000)
        .map(|i| item(&format!("SKU-{i:05}"), 100 + i, "EUR"))
        .collect();
    let loaded = upsert(&mut catalog, items.clone(), false).await.unwrap();
    assert_eq!(
        (loaded.created, loaded.changed, loaded.unchanged),
        (10_000, 0, 0)
    );
    let listed = all_items(&mut catalog, STOREFRONT_KEY).await;
    assert_eq!(listed, items, "a storefront lists every item, by SKU");

    // An order against it is priced from it.
    let placed = orders
        .place_order(with_key(
            sample_order("catalog-1", "DE").with_lines(&[("SKU-00007", 3), ("SKU-09999", 1)]),
            STOREFRONT_KEY,
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(placed.total.unwrap().minor_units, 3 * 107 + 10_099);

    // A bad item refuses the whole batch, naming it; nothing is written.
    let mut bad = vec![item("SKU-00007", 1, "EUR"), item("NEW-1", 5, "EUR")];
    bad.push(item("NEW-2", -3, "EUR"));
    let refused = upsert(&mut catalog, bad, false).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        refused.message(),
        "items[2].price_minor: \"-3\": must be 0 or more"
    );
    for (bad, field) in [
        (item("SKU 1", 1, "EUR"), "items[0].sku"),
        (item("SKU-1", 1, "eur"), "items[0].currency_code"),
    ] {
        let refused = upsert(&mut catalog, vec![bad], false).await.unwrap_err();
        assert!(
            refused.message().starts_with(field),
            "{}",
            refused.message()
        );
    }
    assert_eq!(
        all_items(&mut catalog, OPERATOR_KEY).await,
        items,
        "unchanged"
    );

    // A dry run answers old -> new and changes nothing.
    let plan = upsert(
        &mut catalog,
        vec![
            item("SKU-00007", 999, "EUR"),
            item("SKU-00008", 108, "EUR"),
            item("NEW-1", 5, "EUR"),
        ],
        true,
    )
    .await
    .unwrap();
    assert_eq!(
        (plan.created, plan.changed, plan.unchanged, plan.dry_run),
        (1, 1, 1, true)
    );
    assert_eq!(plan.changes[0].before.as_ref().unwrap().price_minor, 107);
    assert_eq!(plan.changes[0].after.as_ref().unwrap().price_minor, 999);
    assert_eq!(
        all_items(&mut catalog, OPERATOR_KEY).await,
        items,
        "unchanged"
    );

    // Retired: refused by PlaceOrder, listed only when asked.
    let retired = catalog
        .retire_catalog_items(with_key(
            pb::RetireCatalogItemsRequest {
                skus: vec!["SKU-00007".into()],
            },
            OPERATOR_KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retired.retired, 1);
    let refused = orders
        .place_order(with_key(
            sample_order("catalog-2", "DE").with_line("SKU-00007", 1),
            STOREFRONT_KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("retired"),
        "{}",
        refused.message()
    );
    let active = catalog
        .list_catalog_items(with_key(
            pb::ListCatalogItemsRequest {
                page_size: 10,
                ..Default::default()
            },
            STOREFRONT_KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.items[7].sku, "SKU-00008", "SKU-00007 not listed");
    let unknown = catalog
        .retire_catalog_items(with_key(
            pb::RetireCatalogItemsRequest {
                skus: vec!["SKU-00001".into(), "NOPE".into()],
            },
            OPERATOR_KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let listed = all_items(&mut catalog, OPERATOR_KEY).await;
    assert!(!listed[1].retired, "nothing half-applied");
    assert!(listed[7].retired);

    // Upserting a retired item restores it.
    upsert(&mut catalog, vec![item("SKU-00007", 107, "EUR")], false)
        .await
        .unwrap();
    assert_eq!(all_items(&mut catalog, OPERATOR_KEY).await, items);

    // Storefronts list but do not change.
    let denied = catalog
        .upsert_catalog_items(with_key(
            pb::UpsertCatalogItemsRequest {
                items: vec![item("SKU-00001", 1, "EUR")],
                dry_run: false,
            },
            STOREFRONT_KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = catalog
        .retire_catalog_items(with_key(
            pb::RetireCatalogItemsRequest {
                skus: vec!["SKU-00001".into()],
            },
            STOREFRONT_KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // A forged page token is refused.
    let forged = catalog
        .list_catalog_items(with_key(
            pb::ListCatalogItemsRequest {
                page_token: "forged".into(),
                ..Default::default()
            },
            STOREFRONT_KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_on_postgres() {
    catalog_round_trip(TestBackend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_on_sqlite() {
    catalog_round_trip(TestBackend::Sqlite).await;
}
