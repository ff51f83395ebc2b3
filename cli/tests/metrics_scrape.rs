//! What an SRE's Prometheus finds after real traffic and real failures (issue 26: "a test
//! scrapes every service after real traffic and failures and finds them in the series"):
//! Orders, the dispatcher (with credentials) and StatusIngest as `waybill` processes on
//! Postgres, a Tansu broker process, and the `local-express` partner's connector as a
//! `waybill partner` process, each serving `--metrics-listen`. Orders complete the loop; a bad
//! `PlaceOrder`, a forged report token, a wrong API key and a storefront's key on the admin API
//! fail; the broker is killed and comes back empty. Every endpoint is then scraped over HTTP
//! and each effect is asserted in the series with its labels.
//!
//! Every scrape is also read by an independent parser: `promtool check metrics` (Prometheus'
//! own parser and linter) on the classic text format the endpoint serves to a scraper asking
//! for `text/plain`, which must pass. And every series that the dashboard
//! (`deploy/grafana/waybill.json`), the alert rules and their unit tests
//! (`deploy/prometheus/`) name must be one these processes export; the dashboard's
//! expressions must parse as PromQL (`promtool check rules`). That keeps the dashboard and
//! the alerts honest.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // the partner helpers this file does not use (its admin calls carry a key)
#[path = "common/enrolment.rs"]
mod enrolment;
#[allow(dead_code)] // the process helpers this file does not use
#[path = "common/processes.rs"]
mod processes;
#[path = "common/scrape.rs"]
mod scrape;

use std::{
    collections::BTreeSet, net::SocketAddr, path::Path, process::Command, sync::Arc, time::Duration,
};

use enrolment::order_request;
use processes::{Service, free_addr, wait_serving};
use scrape::{
    dashboard_expressions, name_matches, promtool_check_expressions, scrape, scrape_until,
    series_named,
};
use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};
use uuid::Uuid;
use waybill_proto::v1::{
    self as pb, OrderStatus, dispatch_admin_client::DispatchAdminClient,
    order_service_client::OrderServiceClient, status_ingest_client::StatusIngestClient,
};
use waybill_service_kit::security::credentials::hash_api_key;
use waybill_test_kit::{TestBackend, TestDatabase, broker::TestBroker};
use waybill_token::{Report, ReportClaims, SigningKey, TokenSigner};

const PARTNER: &str = "local-express";
const COUNTRY: &str = "US";
const AUDIENCE: &str = "waybill-metrics-test";
const OPERATOR_KEY: &str = "op_metrics_test_5c1e";
const STOREFRONT_KEY: &str = "sf_metrics_test_77a0";
/// Orders placed while every part is up.
const LOOPED: usize = 3;
const WITHIN: Duration = Duration::from_secs(60);

/// `authorization: Bearer <key>` on every call.
#[derive(Clone)]
struct Bearer(AsciiMetadataValue);

impl Bearer {
    fn new(key: &str) -> Self {
        Self(MetadataValue::try_from(format!("Bearer {key}")).unwrap())
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Admin = DispatchAdminClient<InterceptedService<Channel, Bearer>>;

async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn admin(addr: SocketAddr, key: &str) -> Admin {
    DispatchAdminClient::with_interceptor(channel(addr).await, Bearer::new(key))
}

/// Enrols the partner with a route for [`COUNTRY`] and a fresh key written to `key_file`;
/// the key id.
async fn enroll(admin: &mut Admin, key_file: &Path) -> String {
    admin
        .enroll_partner(pb::EnrollPartnerRequest {
            partner: Some(pb::Partner {
                id: PARTNER.to_owned(),
                display_name: PARTNER.to_owned(),
                enabled: true,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    admin
        .set_route(pb::SetRouteRequest {
            route: Some(pb::Route {
                id: format!("{PARTNER}-{COUNTRY}"),
                partner_id: PARTNER.to_owned(),
                country_code: COUNTRY.to_owned(),
                priority: 10,
                enabled: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let key = SigningKey::from_bytes(
        &[Uuid::new_v4(), Uuid::new_v4()]
            .map(|u| *u.as_bytes())
            .concat()
            .try_into()
            .unwrap(),
    );
    std::fs::write(
        key_file,
        waybill_token::keys::signing_key_to_pem(&key).unwrap(),
    )
    .unwrap();
    let key_id = format!("{PARTNER}-k1");
    admin
        .add_partner_key(pb::AddPartnerKeyRequest {
            partner_id: PARTNER.to_owned(),
            key_id: key_id.clone(),
            public_key: key.verifying_key().to_bytes().to_vec(),
        })
        .await
        .unwrap();
    key_id
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_shows_traffic_and_failures_in_its_series() {
    waybill_test_kit::require!(
        std::env::var_os("WAYBILL_TANSU_BIN").is_some(),
        "WAYBILL_TANSU_BIN is not set (scripts/test.sh installs Tansu and sets it)"
    );
    waybill_test_kit::require!(
        Command::new("promtool").arg("--version").output().is_ok(),
        "promtool is missing (Debian's prometheus package; .ci/run installs it)"
    );
    let dir = std::env::temp_dir().join(format!("waybill-metrics-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let database = TestDatabase::create(TestBackend::Postgres).await;
    let broker = Arc::new(TestBroker::tansu());
    let prefix = format!("metrics.{}.", Uuid::new_v4().simple());
    let credentials = dir.join("credentials.json");
    std::fs::write(
        &credentials,
        format!(
            r#"{{"callers":[
                {{"name":"ops","role":"operator","api_key_sha256":"{}"}},
                {{"name":"shop","role":"storefront","api_key_sha256":"{}"}}
            ]}}"#,
            hash_api_key(OPERATOR_KEY),
            hash_api_key(STOREFRONT_KEY)
        ),
    )
    .unwrap();

    let (orders_addr, ingest_addr, dispatcher_addr) = (free_addr(), free_addr(), free_addr());
    let (orders_at, ingest_at, dispatcher_at, connector_at) =
        (free_addr(), free_addr(), free_addr(), free_addr());
    let _orders = Service::start(
        "orders",
        args(&[
            "orders",
            "--listen",
            &orders_addr.to_string(),
            "--database-url",
            &database.url,
            "--seed-catalog",
            "--db-max-connections",
            "6",
            "--metrics-listen",
            &orders_at.to_string(),
        ]),
        &dir,
    );
    let _ingest = Service::start(
        "status-ingest",
        args(&[
            "status-ingest",
            "--listen",
            &ingest_addr.to_string(),
            "--database-url",
            &database.url,
            "--audience",
            AUDIENCE,
            "--db-max-connections",
            "5",
            "--metrics-listen",
            &ingest_at.to_string(),
        ]),
        &dir,
    );
    let dispatcher = Service::start(
        "dispatcher",
        args(&[
            "dispatcher",
            "--listen",
            &dispatcher_addr.to_string(),
            "--database-url",
            &database.url,
            "--credentials-file",
            credentials.to_str().unwrap(),
            "--db-max-connections",
            "4",
            // Above the batches in flight plus two, as docs/operations.md asks: on Postgres each
            // batch in flight holds a connection while it is produced (for the whole broker
            // outage below); with the default four, other work timed out waiting for one (3 to 6
            // acquire timeouts a run on a quiet machine).
            "--batches-in-flight",
            "1",
            "--kafka-brokers",
            broker.bootstrap_servers(),
            "--topic-prefix",
            &prefix,
            "--topic-partitions",
            "1",
            "--reply-to",
            &format!("http://{ingest_addr}"),
            "--poll-interval",
            "250ms",
            "--produce-timeout",
            "2s",
            "--backoff-base",
            "500ms",
            "--backoff-cap",
            "2s",
            "--metrics-listen",
            &dispatcher_at.to_string(),
        ]),
        &dir,
    );
    wait_serving(orders_addr, "orders", &dir.join("orders.log")).await;
    wait_serving(ingest_addr, "status-ingest", &dir.join("status-ingest.log")).await;
    wait_serving(dispatcher_addr, "dispatcher", &dispatcher.log).await;

    let mut operator = admin(dispatcher_addr, OPERATOR_KEY).await;
    let key_file = dir.join("partner.pem");
    let key_id = enroll(&mut operator, &key_file).await;
    let connector = Service::start(
        "partner",
        args(&[
            "partner",
            PARTNER,
            "--kafka-brokers",
            broker.bootstrap_servers(),
            "--topic-prefix",
            &prefix,
            "--session-timeout-ms",
            "6000",
            "--fetch-wait-ms",
            "5",
            "--key-file",
            key_file.to_str().unwrap(),
            "--key-id",
            &key_id,
            "--audience",
            AUDIENCE,
            "--inbox",
            dir.join("inbox.db").to_str().unwrap(),
            "--shipped-after-ms",
            "100",
            "--metrics-listen",
            &connector_at.to_string(),
        ]),
        &dir,
    );

    // Real traffic: orders that complete the loop (placed, sent, acknowledged by the partner).
    let mut orders = OrderServiceClient::new(channel(orders_addr).await);
    let mut placed = Vec::new();
    for _ in 0..LOOPED {
        let reply = orders
            .place_order(order_request(&Uuid::new_v4().to_string(), COUNTRY))
            .await
            .unwrap()
            .into_inner();
        placed.push(reply.order.unwrap().id);
    }
    let acknowledged = format!(
        r#"waybill_status_ingest_placed_to_acknowledged_seconds_count{{partner="{PARTNER}"}}"#
    );
    let ingest = scrape_until("status-ingest", ingest_at, WITHIN, |now| {
        now.get(&acknowledged) == Some(LOOPED as f64)
    })
    .await;
    let seconds = ingest.value(&format!(
        r#"waybill_status_ingest_placed_to_acknowledged_seconds_sum{{partner="{PARTNER}"}}"#
    ));
    assert!(
        seconds > 0.0 && seconds < WITHIN.as_secs_f64() * LOOPED as f64,
        "placed → acknowledged {seconds} s for {LOOPED} orders"
    );
    assert_eq!(
        ingest.value(&format!(
            r#"waybill_status_ingest_placed_to_acknowledged_seconds_bucket{{le="+Inf",partner="{PARTNER}"}}"#
        )),
        LOOPED as f64
    );

    // Bad calls: an invalid order, a report under the partner's key id signed by another key.
    let invalid = orders
        .place_order(pb::PlaceOrderRequest::default())
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument, "{invalid:?}");
    let forged = forged_report(&key_id, &placed[0]);
    let refused = StatusIngestClient::new(channel(ingest_addr).await)
        .report_status(forged)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    // Denied credentials on the admin API: a key nobody owns, a storefront's key.
    let list = || pb::ListDispatchesRequest::default();
    let stranger = admin(dispatcher_addr, "not-a-key")
        .await
        .list_dispatches(list())
        .await;
    assert_eq!(stranger.unwrap_err().code(), tonic::Code::Unauthenticated);
    let storefront = admin(dispatcher_addr, STOREFRONT_KEY)
        .await
        .list_dispatches(list())
        .await;
    assert_eq!(
        storefront.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );

    // The broker goes down (killed; it comes back empty after 15 s) while an order waits.
    let restarted = tokio::task::spawn_blocking({
        let broker = broker.clone();
        move || broker.restart(Duration::from_secs(15))
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(broker.bootstrap_servers())
        .await
        .is_ok()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the broker is still up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    orders
        .place_order(order_request(&Uuid::new_v4().to_string(), COUNTRY))
        .await
        .unwrap();
    let down = scrape_until(
        "dispatcher",
        dispatcher_at,
        Duration::from_secs(14),
        |now| now.get("waybill_dispatcher_can_send") == Some(0.0),
    )
    .await;
    assert!(down.value("waybill_dispatcher_send_failures_total") >= 1.0);
    assert!(down.value("waybill_dispatcher_failed_batches_in_a_row") >= 1.0);
    assert!(restarted.await.unwrap(), "a Tansu broker restarts");
    let dispatcher_now = scrape_until("dispatcher", dispatcher_at, WITHIN, |now| {
        now.get("waybill_dispatcher_can_send") == Some(1.0)
            && now.get("waybill_dispatcher_sent_total") == Some((LOOPED + 1) as f64)
    })
    .await;

    // Every endpoint, after all that.
    let orders_now = scrape("orders", orders_at).await;
    let ingest_now = scrape("status-ingest", ingest_at).await;
    let connector_now = scrape_until("partner", connector_at, WITHIN, |now| {
        now.get(&format!(
            r#"waybill_connector_reports_confirmed_total{{partner="{PARTNER}"}}"#
        ))
        .is_some_and(|confirmed| confirmed >= LOOPED as f64)
    })
    .await;

    let place = |code: &str| {
        format!(
            r#"waybill_orders_grpc_server_handled_total{{grpc_service="waybill.v1.OrderService",grpc_method="PlaceOrder",grpc_code="{code}"}}"#
        )
    };
    assert_eq!(orders_now.value(&place("OK")), (LOOPED + 1) as f64);
    assert_eq!(orders_now.value(&place("INVALID_ARGUMENT")), 1.0);
    assert_eq!(
        orders_now.value(
            r#"waybill_orders_grpc_server_handling_seconds_count{grpc_service="waybill.v1.OrderService",grpc_method="PlaceOrder"}"#
        ),
        (LOOPED + 2) as f64
    );
    assert_eq!(
        orders_now.value("waybill_orders_placed_total"),
        (LOOPED + 1) as f64
    );
    assert!(
        orders_now
            .text
            .contains("waybill_orders_build_info{version=")
    );

    let admin_call = |method: &str, code: &str| {
        format!(
            r#"waybill_dispatcher_grpc_server_handled_total{{grpc_service="waybill.v1.DispatchAdmin",grpc_method="{method}",grpc_code="{code}"}}"#
        )
    };
    assert_eq!(
        dispatcher_now.value(&admin_call("EnrollPartner", "OK")),
        1.0
    );
    assert_eq!(
        dispatcher_now.value(&admin_call("ListDispatches", "UNAUTHENTICATED")),
        1.0
    );
    assert_eq!(
        dispatcher_now.value(&admin_call("ListDispatches", "PERMISSION_DENIED")),
        1.0
    );
    for (reason, calls) in [
        ("unauthenticated", 1.0),
        ("permission_denied", 1.0),
        ("rate_limited", 0.0),
        ("overloaded", 0.0),
    ] {
        assert_eq!(
            dispatcher_now.value(&format!(
                r#"waybill_dispatcher_grpc_server_refused_total{{reason="{reason}"}}"#
            )),
            calls,
            "{reason}"
        );
    }
    assert!(dispatcher_now.value("waybill_dispatcher_send_failures_total") >= 1.0);

    let report = |method: &str, code: &str| {
        format!(
            r#"waybill_status_ingest_grpc_server_handled_total{{grpc_service="waybill.v1.StatusIngest",grpc_method="{method}",grpc_code="{code}"}}"#
        )
    };
    assert_eq!(
        ingest_now.value(&report("ReportStatus", "UNAUTHENTICATED")),
        1.0
    );
    // The connector's reports go in ReportStatuses calls (several to a call when they come
    // together); that they all landed is the acknowledgements' count below.
    assert!(ingest_now.value(&report("ReportStatuses", "OK")) >= 1.0);
    assert_eq!(
        ingest_now.value(r#"waybill_status_ingest_reports_rejected_total{reason="bad_signature"}"#),
        1.0
    );
    // The order placed during the outage may have been acknowledged since: at least the three.
    assert!(ingest_now.value(&acknowledged) >= LOOPED as f64);
    assert_eq!(
        connector_now.value(&format!(
            r#"waybill_connector_running{{partner="{PARTNER}"}}"#
        )),
        1.0
    );

    // Pool usage on every service's endpoint: the bound each was given (--db-max-connections),
    // connections open.
    for (scrape, max) in [
        (&orders_now, 6.0),
        (&dispatcher_now, 4.0),
        (&ingest_now, 5.0),
    ] {
        assert_eq!(
            scrape.value("waybill_db_pool_max_connections"),
            max,
            "{}",
            scrape.what
        );
        let open = scrape.value(r#"waybill_db_pool_connections{state="in_use"}"#)
            + scrape.value(r#"waybill_db_pool_connections{state="idle"}"#);
        assert!(open >= 1.0 && open <= max, "{}: {open}", scrape.what);
        assert_eq!(
            scrape.value("waybill_db_pool_acquire_timeouts_total"),
            0.0,
            "{}",
            scrape.what
        );
    }
    for scrape in [&orders_now, &dispatcher_now, &ingest_now, &connector_now] {
        assert!(
            scrape.value("process_resident_memory_bytes") > 0.0,
            "{}",
            scrape.what
        );
    }

    // The dashboard and the alerts name only what these processes export.
    let exported: BTreeSet<String> = [&orders_now, &dispatcher_now, &ingest_now, &connector_now]
        .iter()
        .flat_map(|scrape| scrape.names.iter().cloned())
        .collect();
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let dashboard = std::fs::read_to_string(deploy.join("grafana/waybill.json")).unwrap();
    let expressions = dashboard_expressions(&dashboard);
    assert!(expressions.len() >= 20, "{expressions:?}");
    for file in [
        "grafana/waybill.json",
        "prometheus/alerts.yml",
        "prometheus/alerts_test.yml",
    ] {
        let text = std::fs::read_to_string(deploy.join(file)).unwrap();
        let (names, patterns) = series_named(&text);
        assert!(!names.is_empty(), "{file} names no series");
        let unknown: Vec<&String> = names.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} names series no process exports: {unknown:?}\nexported: {exported:?}"
        );
        for pattern in patterns {
            assert!(
                exported.iter().any(|name| name_matches(&pattern, name)),
                "{file}: __name__=~\"{pattern}\" matches no exported series"
            );
        }
    }
    promtool_check_expressions(&dir, &expressions);
    let _ = std::fs::remove_dir_all(&dir);
    drop(connector);
}

/// A report for `order_id` under the partner's enrolled key id, signed by a key that is not
/// the enrolled one.
fn forged_report(key_id: &str, order_id: &str) -> pb::ReportStatusRequest {
    let now = waybill_service_kit::clock::truncate_to_micros(chrono::Utc::now());
    let report = Report {
        partner_id: PARTNER.to_owned(),
        order_id: order_id.to_owned(),
        report_id: "forged-1".to_owned(),
        status: OrderStatus::Delivered.short_name().to_owned(),
        tracking_id: String::new(),
        detail: String::new(),
        detail_code: String::new(),
        action_required: false,
        occurred_at: now,
    };
    let forger = TokenSigner::new(SigningKey::from_bytes(&[7; 32]), key_id);
    let token = forger.sign(&ReportClaims::new(
        &report,
        AUDIENCE,
        now,
        120,
        Uuid::new_v4().to_string(),
    ));
    pb::ReportStatusRequest {
        correlation_id: report.order_id,
        partner_id: report.partner_id,
        report_id: report.report_id,
        status: OrderStatus::Delivered.into(),
        occurred_at: Some(waybill_proto::time::to_timestamp(now)),
        token,
        ..Default::default()
    }
}
