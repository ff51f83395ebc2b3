//! `waybill admin` as a process against a dispatcher, Orders and StatusIngest served over TLS
//! with client certificates required and an operator's API key, on Postgres and SQLite: every
//! subcommand does its job (partners enrol/list/update/disable — a disabled partner stays
//! disabled through an update —, routes set/explain/delete, keys add/list/revoke from the key
//! `waybill keys generate` wrote and with the command it printed, a real UNROUTABLE order
//! listed, shown and retried until sent, catalog upsert/list/retire, relay and report stats),
//! `--json` is proto3 JSON that parses, and a wrong API key, a missing client certificate, a
//! storefront's key, an unreachable service and a bad request each fail with a clear message
//! and their own exit status.
#![allow(clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Output,
    sync::Arc,
    time::Duration,
};

use serde_json::Value;
use tonic::{Request, metadata::MetadataValue};
use waybill_dispatcher::{RelaySettings, kafka::TopicNames};
use waybill_proto::v1::order_service_client::OrderServiceClient;
use waybill_service_kit::security::{
    Credentials, ReloadableTls, ServerSecurity, auth::hash_api_key,
};
use waybill_stack::{Broker, DispatcherSettings, IngestSettings, StackSettings};
use waybill_test_kit::{
    TestBackend, TestDatabase, broker::TestBroker, eventually, fixtures::sample_order, tls::TestPki,
};

const OPERATOR_KEY: &str = "op_admin_cli_6f1d2e";
const STOREFRONT_KEY: &str = "sf_admin_cli_90ab3c";

/// The three services on one database, as `waybill dev` assembles them (`waybill_stack`), each
/// over TLS requiring a client certificate from the test CA, with credentials; stopped when
/// dropped (the services first, then the broker and the database).
struct Stack {
    dispatcher: SocketAddr,
    orders: SocketAddr,
    ingest: SocketAddr,
    pki: TestPki,
    _services: waybill_stack::Stack,
    _broker: TestBroker,
    _db: TestDatabase,
}

async fn start(backend: TestBackend) -> Stack {
    let pki = TestPki::new();
    let credentials = Credentials::parse(&format!(
        r#"{{"callers":[
            {{"name":"ops","role":"operator","api_key_sha256":"{}"}},
            {{"name":"shop","role":"storefront","api_key_sha256":"{}"}}
        ]}}"#,
        hash_api_key(OPERATOR_KEY),
        hash_api_key(STOREFRONT_KEY),
    ))
    .unwrap();
    let security = ServerSecurity {
        tls: Some(ReloadableTls::load(pki.server_files(true)).unwrap()),
        credentials: Some(Arc::new(credentials)),
        rate_limit: None,
    };
    let test_db = TestDatabase::create(backend).await;
    let broker = TestBroker::start();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let topics = TopicNames {
        partner_prefix: format!("a{}.partner.", &suffix[..10]),
        audit: format!("a{}.audit", &suffix[..10]),
        order_events: format!("a{}.events", &suffix[..10]),
    };
    broker.create_topic(&topics.audit, 1).await;
    broker.create_topic(&topics.order_events, 1).await;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let kafka = Broker::Kafka {
        settings: broker.kafka_settings(Duration::from_secs(5)),
        topic_creator: Some(broker.topic_creator()),
    };
    let services = waybill_stack::Stack::start(StackSettings {
        region: "test".to_owned(),
        dispatcher: Some(DispatcherSettings {
            relay: RelaySettings {
                topics,
                poll_interval: Duration::from_millis(200),
                ..RelaySettings::default()
            },
            ..DispatcherSettings::new(loopback, kafka)
        }),
        // Its reply-to is https: the stack's certificate.
        status_ingest: Some(IngestSettings::new(loopback, "waybill-test")),
        security,
        ..StackSettings::new(test_db.url.clone(), loopback)
    })
    .await
    .unwrap();
    Stack {
        dispatcher: services.dispatcher_addr.unwrap(),
        orders: services.orders_addr,
        ingest: services.ingest_addr().unwrap(),
        pki,
        _services: services,
        _broker: broker,
        _db: test_db,
    }
}

/// How a `waybill` process is told where the services are and who it is.
#[derive(Clone, Copy)]
enum Caller<'a> {
    /// The operator: CA, client certificate and key, operator API key (all from the
    /// environment).
    Operator,
    /// The operator's certificate with this API key instead.
    ApiKey(&'a str),
    /// The operator's API key and no client certificate.
    NoClientCert,
}

impl Stack {
    fn file(&self, name: &str) -> PathBuf {
        self.pki.dir.join(name)
    }

    /// Runs `waybill ARGS` as `caller`.
    async fn waybill(&self, caller: Caller<'_>, args: &[&str]) -> Output {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_waybill"));
        command
            .args(args)
            .env("WAYBILL_DISPATCHER", self.dispatcher.to_string())
            .env("WAYBILL_ORDERS", self.orders.to_string())
            .env("WAYBILL_STATUS_INGEST", self.ingest.to_string())
            .env("WAYBILL_TLS_CA", self.file("ca.pem"))
            .env("WAYBILL_CLIENT_CERT", self.file("client.pem"))
            .env("WAYBILL_CLIENT_KEY", self.file("client.key"))
            .env("WAYBILL_API_KEY", OPERATOR_KEY)
            .env("NO_COLOR", "1");
        match caller {
            Caller::Operator => {}
            Caller::ApiKey(key) => {
                command.env("WAYBILL_API_KEY", key);
            }
            Caller::NoClientCert => {
                command
                    .env_remove("WAYBILL_CLIENT_CERT")
                    .env_remove("WAYBILL_CLIENT_KEY");
            }
        }
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    }

    /// `waybill admin WORDS` as the operator; asserts it succeeded and returns stdout.
    async fn admin_words(&self, words: &[&str]) -> String {
        let mut all = vec!["admin"];
        all.extend_from_slice(words);
        let output = self.waybill(Caller::Operator, &all).await;
        let (out, err) = (text(&output.stdout), text(&output.stderr));
        assert!(output.status.success(), "{all:?}: {out}\n{err}");
        out
    }

    /// `waybill admin LINE` (its words split at spaces) as the operator: stdout.
    async fn admin(&self, line: &str) -> String {
        self.admin_words(&line.split_whitespace().collect::<Vec<_>>())
            .await
    }

    /// `waybill admin LINE --json` as the operator, parsed.
    async fn admin_json(&self, line: &str) -> Value {
        let printed = self.admin(&format!("{line} --json")).await;
        serde_json::from_str(&printed).unwrap_or_else(|e| panic!("{e}: {printed}"))
    }

    /// `waybill admin LINE` as `caller`, which must fail with exit status `code` and print
    /// nothing on stdout; returns stderr.
    async fn refused(&self, caller: Caller<'_>, line: &str, code: i32) -> String {
        let mut all = vec!["admin"];
        all.extend(line.split_whitespace());
        let output = self.waybill(caller, &all).await;
        let errors = text(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{line}: {errors}");
        assert!(output.stdout.is_empty(), "{}", text(&output.stdout));
        errors
    }

    /// Places an order to `country` as the storefront; its id.
    async fn place(&self, key: &str, country: &str) -> String {
        let channel = tonic::transport::Channel::from_shared(format!("https://{}", self.orders))
            .unwrap()
            .tls_config(self.pki.client_config(Some(&self.pki.client)))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut request = Request::new(sample_order(key, country));
        let bearer: MetadataValue<_> = format!("Bearer {STOREFRONT_KEY}").parse().unwrap();
        request.metadata_mut().insert("authorization", bearer);
        OrderServiceClient::new(channel)
            .place_order(request)
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap()
            .id
    }

    /// Waits until the order's dispatch is in `state` (read with `dispatches get --json`).
    async fn dispatch_in(&self, order: &str, state: &str) -> Value {
        eventually(
            Duration::from_secs(20),
            &format!("{order} {state}"),
            || async {
                let dispatch = self.admin_json(&format!("dispatches get {order}")).await;
                (dispatch["state"] == state).then_some(dispatch)
            },
        )
        .await
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The row of a table whose first column is `first`.
fn row<'a>(table: &'a str, first: &str) -> Option<&'a str> {
    table
        .lines()
        .find(|line| line.split_whitespace().next() == Some(first))
}

async fn partners_routes_and_keys(stack: &Stack, keys_dir: &Path) {
    let enrolled = stack
        .admin_words(&[
            "partners",
            "enrol",
            "acme",
            "--name",
            "Acme Freight",
            "--handover-deadline",
            "10m",
            "--resend-budget",
            "3",
        ])
        .await;
    assert!(enrolled.contains("enabled:"), "{enrolled}");
    let listed = stack.admin("partners list").await;
    assert!(listed.starts_with("ID "), "a header first: {listed}");
    let acme = row(&listed, "acme").unwrap_or_else(|| panic!("{listed}"));
    assert!(acme.contains("Acme Freight") && acme.contains("yes") && acme.contains("10m"));
    let json = stack.admin_json("partners list").await;
    assert_eq!(json["partners"][0]["id"], "acme");
    assert_eq!(json["partners"][0]["handoverDeadline"], "600s");
    assert_eq!(json["partners"][0]["resendBudget"], 3);

    // Disabled (a dry run first: it stays enabled), then updated: it stays disabled. A dry run
    // of the update changes nothing.
    let plan = stack.admin_json("partners disable acme --dry-run").await;
    assert_eq!(plan["impact"]["applied"], false, "{plan}");
    let json = stack.admin_json("partners list").await;
    assert_eq!(
        json["partners"][0]["enabled"], true,
        "a dry run disables nothing"
    );
    let disabled = stack.admin_json("partners disable acme").await;
    assert_eq!(disabled["enabled"], false, "{disabled}");
    let plan = stack
        .admin("partners update acme --handover-deadline 5m --dry-run")
        .await;
    assert!(plan.contains("would change handover_deadline"), "{plan}");
    assert!(plan.contains("dry run"), "{plan}");
    let json = stack.admin_json("partners list").await;
    assert_eq!(json["partners"][0]["handoverDeadline"], "600s");
    let updated = stack
        .admin_json("partners update acme --handover-deadline 5m")
        .await;
    assert_eq!(updated["applied"], true, "{updated}");
    assert_eq!(updated["partner"]["enabled"], false, "{updated}");
    let json = stack.admin_json("partners list").await;
    assert_eq!(json["partners"][0]["enabled"], false);
    assert_eq!(json["partners"][0]["handoverDeadline"], "300s");
    // Nothing to change is a usage error, sent nowhere.
    let errors = stack
        .refused(Caller::Operator, "partners update acme", 64)
        .await;
    assert!(errors.contains("nothing to change"), "{errors}");

    // Routes: set, explain (the partner is disabled: nothing matches), enable, explain.
    let set = stack
        .admin("routes set acme-de --partner acme --country DE --priority 10")
        .await;
    assert!(row(&set, "acme-de").is_some(), "{set}");
    let listed = stack.admin("routes list").await;
    let route = row(&listed, "acme-de").unwrap_or_else(|| panic!("{listed}"));
    assert!(route.contains("DE") && route.contains("10"), "{route}");
    let explained = stack.admin("routes explain --country DE").await;
    assert!(explained.contains("UNROUTABLE"), "{explained}");
    assert!(explained.contains("disabled"), "{explained}");
    stack.admin("partners update acme --enable").await;
    let explained = stack.admin_json("routes explain --country DE").await;
    assert_eq!(explained["chosen"]["id"], "acme-de", "{explained}");
    assert_eq!(explained["verdicts"][0]["matched"], true, "{explained}");
    let explained = stack.admin("routes explain --country FR").await;
    assert!(explained.contains("UNROUTABLE"), "{explained}");
    assert!(explained.contains("country"), "{explained}");
    stack
        .admin("routes set acme-fr --partner acme --country FR")
        .await;
    let deleted = stack.admin("routes delete acme-fr").await;
    assert!(deleted.contains("deleted route acme-fr"), "{deleted}");
    let listed = stack.admin_json("routes list").await;
    assert_eq!(listed["routes"].as_array().unwrap().len(), 1, "{listed}");

    // Keys: `waybill keys generate` prints the admin command that enrols the key; run as
    // printed (its words; the paths hold no spaces), it does.
    let dir = keys_dir.to_str().unwrap();
    let generate = format!("keys generate --partner acme --key-id acme-1 --out-dir {dir}");
    let generated = stack
        .waybill(Caller::Operator, &generate.split(' ').collect::<Vec<_>>())
        .await;
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    let printed = text(&generated.stdout);
    let words: Vec<&str> = printed.split_whitespace().collect();
    assert_eq!(words[..4], ["waybill", "admin", "keys", "add"], "{printed}");
    let added = stack.admin_words(&words[2..]).await;
    assert!(added.contains("acme-1"), "{added}");
    let keys = stack.admin("keys list --partner acme").await;
    assert!(keys.starts_with("KEY ID  CREATED"), "{keys}");
    assert!(keys.contains("LAST USED"), "{keys}");
    let key = row(&keys, "acme-1").unwrap_or_else(|| panic!("{keys}"));
    let words: Vec<&str> = key.split_whitespace().collect();
    assert_eq!(words[2..], ["-", "-"], "never used, not revoked yet: {key}");
    let revoked = stack
        .admin_json("keys revoke --partner acme --key-id acme-1")
        .await;
    assert!(revoked["revokedAt"].is_string(), "{revoked}");
    let keys = stack.admin_json("keys list --partner acme").await;
    assert!(keys["keys"][0]["revokedAt"].is_string(), "{keys}");
    let missing = "keys add --partner acme --key-id x --public-key /nonexistent.pem";
    let errors = stack.refused(Caller::Operator, missing, 64).await;
    assert!(errors.contains("cannot read /nonexistent.pem"), "{errors}");
}

async fn dispatches(stack: &Stack) {
    // An order to a country nobody serves is UNROUTABLE: listed, shown, and retried once a
    // route exists, then sent.
    let order = stack.place("admin-br-1", "BR").await;
    stack.dispatch_in(&order, "DISPATCH_STATE_UNROUTABLE").await;
    let listed = stack.admin("dispatches list --state unroutable").await;
    let line = row(&listed, &order).unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains("UNROUTABLE"), "{line}");
    let json = stack
        .admin_json("dispatches list --state UNROUTABLE --limit 5")
        .await;
    assert_eq!(json["dispatches"][0]["orderId"], order.as_str(), "{json}");
    let none = stack.admin_json("dispatches list --partner nobody").await;
    assert_eq!(none["dispatches"], Value::Array(Vec::new()), "{none}");
    let shown = stack.admin(&format!("dispatches get {order}")).await;
    assert!(
        shown.contains("state:") && shown.contains("UNROUTABLE"),
        "{shown}"
    );
    assert!(shown.contains("total:"), "{shown}");

    stack
        .admin("routes set acme-br --partner acme --country BR")
        .await;
    // A dry run names the order and changes nothing; a cap out of bounds is refused.
    let plan = stack
        .admin_json("dispatches retry --state unroutable --dry-run")
        .await;
    assert_eq!(plan["orderIds"][0], order.as_str(), "{plan}");
    assert_eq!(plan["applied"], false, "{plan}");
    let plan = stack
        .admin(&format!("dispatches retry {order} --dry-run --spread 1m"))
        .await;
    assert_eq!(plan.trim(), order, "{plan}");
    let still = stack.admin_json(&format!("dispatches get {order}")).await;
    assert_eq!(still["state"], "DISPATCH_STATE_UNROUTABLE", "{still}");
    let capped = "dispatches retry --state unroutable --max 0";
    let errors = stack.refused(Caller::Operator, capped, 1).await;
    assert!(
        errors.contains("RetryDispatches: INVALID_ARGUMENT"),
        "{errors}"
    );
    let retried = stack.admin(&format!("dispatches retry {order}")).await;
    assert_eq!(retried.trim(), order, "{retried}");
    let sent = stack.dispatch_in(&order, "DISPATCH_STATE_SENT").await;
    assert_eq!(sent["partnerId"], "acme", "{sent}");

    // Deleting the only BR route would leave BR without one and the order unroutable: a dry
    // run says so and changes nothing.
    let plan = stack.admin("routes delete acme-br --dry-run").await;
    assert!(plan.contains("would be deleted"), "{plan}");
    assert!(
        plan.contains("countries left without a route: BR"),
        "{plan}"
    );
    let plan = stack.admin_json("routes delete acme-br --dry-run").await;
    assert_eq!(
        plan["impact"]["countriesLeftWithoutRoute"][0], "BR",
        "{plan}"
    );
    assert_eq!(plan["impact"]["ordersUnroutable"], "1", "{plan}");
    let routes = stack.admin("routes list").await;
    assert!(row(&routes, "acme-br").is_some(), "{routes}");

    // A filter that finds none retries none; a filter without a state is refused by the
    // dispatcher; neither ids nor a filter is a usage error.
    let none = stack.admin_json("dispatches retry --state dead").await;
    assert_eq!(none["orderIds"], Value::Array(Vec::new()), "{none}");
    let errors = stack
        .refused(Caller::Operator, "dispatches retry --partner acme", 1)
        .await;
    assert!(
        errors.contains("RetryDispatches: INVALID_ARGUMENT"),
        "{errors}"
    );
    let errors = stack
        .refused(Caller::Operator, "dispatches retry", 64)
        .await;
    assert!(errors.contains("name the orders to retry"), "{errors}");
    let unknown = "dispatches get 0193a3f0-0000-7000-8000-00000000abcd";
    let errors = stack.refused(Caller::Operator, unknown, 1).await;
    assert!(errors.contains("GetDispatch: NOT_FOUND"), "{errors}");

    let stats = stack.admin("relay stats").await;
    assert!(stats.lines().any(|l| l.starts_with("can send:")), "{stats}");
    let stats = stack.admin_json("relay stats").await;
    assert!(stats["canSend"].is_boolean(), "{stats}");
    let sent: u64 = stats["sent"].as_str().unwrap().parse().unwrap();
    assert!(sent >= 1, "{stats}");
}

async fn catalog_and_reports(stack: &Stack) {
    let created = stack
        .admin_words(&[
            "catalog",
            "upsert",
            "LAMP-9",
            "--name",
            "Desk lamp",
            "--price-minor",
            "4599",
            "--currency",
            "EUR",
        ])
        .await;
    assert!(created.contains("create LAMP-9: 4599 EUR"), "{created}");
    let listed = stack.admin("catalog list").await;
    assert!(listed.starts_with("SKU "), "{listed}");
    let lamp = row(&listed, "LAMP-9").unwrap_or_else(|| panic!("{listed}"));
    assert!(
        lamp.contains("4599") && lamp.contains("Desk lamp"),
        "{lamp}"
    );
    let retired = stack.admin("catalog retire LAMP-9").await;
    assert!(retired.contains("retired 1 item(s)"), "{retired}");
    // `waybill catalog` is the same command.
    let all = stack
        .waybill(
            Caller::Operator,
            &["catalog", "list", "--include-retired", "--json"],
        )
        .await;
    assert!(all.status.success(), "{}", text(&all.stderr));
    let all: Value = serde_json::from_slice(&all.stdout).unwrap();
    let items = all["items"].as_array().unwrap();
    let lamp = items.iter().find(|item| item["sku"] == "LAMP-9").unwrap();
    assert_eq!(lamp["retired"], true);
    assert_eq!(lamp["priceMinor"], "4599");

    let reports = stack.admin("reports stats").await;
    assert!(reports.starts_with("accepted:"), "{reports}");
    let reports = stack.admin_json("reports stats").await;
    assert_eq!(reports["accepted"], "0", "{reports}");
    assert!(reports["rejected"].is_object(), "{reports}");
}

async fn refusals(stack: &Stack) {
    // A wrong API key: the dispatcher's answer, its code, exit 1; the key never echoed.
    let errors = stack
        .refused(Caller::ApiKey("op_wrong"), "partners list", 1)
        .await;
    let expected = "refused ListPartners: UNAUTHENTICATED: unknown credential";
    assert!(errors.contains(expected), "{errors}");
    assert!(!errors.contains("op_wrong"), "{errors}");
    // A storefront's key may not administer.
    let errors = stack
        .refused(Caller::ApiKey(STOREFRONT_KEY), "relay stats", 1)
        .await;
    assert!(errors.contains("PERMISSION_DENIED"), "{errors}");
    // No client certificate: the listener requires one, and the message says which flags.
    let errors = stack.refused(Caller::NoClientCert, "routes list", 1).await;
    let expected = "requires a client certificate: pass --tls-cert and --tls-key";
    assert!(errors.contains(expected), "{errors}");
    // Nothing listening: unreachable, exit 69, the flag to check named.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let errors = stack
        .refused(
            Caller::Operator,
            &format!("relay stats --dispatcher {closed}"),
            69,
        )
        .await;
    assert!(errors.contains("cannot be reached"), "{errors}");
    assert!(errors.contains("--dispatcher"), "{errors}");
}

async fn admin_commands(backend: TestBackend) {
    let stack = start(backend).await;
    let keys_dir = stack.pki.dir.join("keys");
    partners_routes_and_keys(&stack, &keys_dir).await;
    dispatches(&stack).await;
    catalog_and_reports(&stack).await;
    refusals(&stack).await;
}

waybill_test_kit::on_both_backends!(admin_commands);
