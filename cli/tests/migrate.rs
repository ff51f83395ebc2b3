//! The schema and the data as an operator handles them (docs/operations.md, "How do I upgrade"
//! and "How do I back up and restore"). `waybill migrate` before an upgrade, on both backends:
//! `--check` on a fresh database names every pending migration and exits 3, changing nothing; a
//! service started with `--migrate-on-start false` refuses that database, naming the command;
//! `waybill migrate` applies them (once: a second run has nothing to do); then `--check` exits 0
//! and the service starts. A backup taken with `pg_dump` while Orders runs and restored with
//! `pg_restore` into a new database, exactly as the page says, is current for `--check` and
//! serves its orders, their idempotency keys included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    process::{Command, Output, Stdio},
    time::Duration,
};

use waybill_proto::v1::{self as pb, order_service_client::OrderServiceClient};
use waybill_test_kit::{
    TestBackend, TestDatabase, eventually, fixtures::sample_order, on_both_backends,
    process::KilledOnDrop,
};

fn waybill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_waybill"))
        .args(args)
        .env_remove("WAYBILL_DATABASE_URL")
        .env_remove("WAYBILL_MIGRATE_ON_START")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn an_operator_migrates_before_starting_the_services(backend: TestBackend) {
    let database = TestDatabase::create(backend).await;
    let url = database.url.as_str();

    let check = waybill(&["migrate", "--database-url", url, "--check"]);
    assert_eq!(check.status.code(), Some(3), "{}", text(&check));
    let stdout = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(stdout.contains("schema version 0"), "{stdout}");
    assert!(stdout.contains("pending 1 (orders)"), "{stdout}");
    assert!(stdout.contains("run `waybill migrate`"), "{stdout}");
    let pending = stdout.lines().filter(|l| l.starts_with("pending ")).count();
    assert!(pending >= 8, "{stdout}");

    // A service that must not migrate refuses the database, naming the remedy.
    let refused = waybill(&[
        "orders",
        "--database-url",
        url,
        "--listen",
        "127.0.0.1:0",
        "--migrate-on-start",
        "false",
    ]);
    assert!(!refused.status.success(), "{}", text(&refused));
    let said = text(&refused);
    assert!(
        said.contains("the database schema is behind this binary"),
        "{said}"
    );
    assert!(said.contains("waybill migrate"), "{said}");
    // The check changed nothing, and neither did the refusal.
    let again = waybill(&["migrate", "--database-url", url, "--check", "--json"]);
    assert_eq!(again.status.code(), Some(3), "{}", text(&again));
    let json: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(json["version"], 0);
    assert_eq!(json["pending"].as_array().unwrap().len(), pending);

    let applied = waybill(&["migrate", "--database-url", url, "--json"]);
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied));
    let json: serde_json::Value = serde_json::from_slice(&applied.stdout).unwrap();
    assert_eq!(json["applied_now"].as_array().unwrap().len(), pending);
    assert_eq!(json["pending"].as_array().unwrap().len(), 0);
    assert_eq!(json["applied_now"][0]["version"], 1);
    assert_eq!(json["applied_now"][0]["description"], "orders");

    let twice = waybill(&["migrate", "--database-url", url]);
    assert_eq!(twice.status.code(), Some(0), "{}", text(&twice));
    let stdout = String::from_utf8_lossy(&twice.stdout);
    assert!(stdout.contains("up to date: nothing to apply"), "{stdout}");
    assert!(!stdout.contains("applied "), "{stdout}");

    let current = waybill(&["migrate", "--database-url", url, "--check"]);
    assert_eq!(current.status.code(), Some(0), "{}", text(&current));

    // Now the service starts on it without migrating, and serves.
    let _orders = start_orders(url, &["--migrate-on-start", "false"]).await;
}

/// `waybill orders` on `url` with `extra` flags, once it serves; killed when dropped.
async fn start_orders(url: &str, extra: &[&str]) -> (KilledOnDrop, String) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut service = KilledOnDrop(
        Command::new(env!("CARGO_BIN_EXE_waybill"))
            .args(["orders", "--database-url", url, "--listen", &addr])
            .args(extra)
            .env_remove("WAYBILL_MIGRATE_ON_START")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually(Duration::from_secs(60), "orders serving", || {
        let exited = service.try_wait().unwrap();
        assert!(exited.is_none(), "orders stopped: {exited:?}");
        let health = waybill(&["health", &addr]);
        std::future::ready(health.status.success())
    })
    .await;
    (service, addr)
}

fn tool(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} (Debian's postgresql-client) must be installed: {e}")
        });
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        text(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_as_the_runbook_says_serves_its_orders() {
    let live = TestDatabase::create(TestBackend::Postgres).await;
    let (orders, addr) = start_orders(&live.url, &["--seed-catalog"]).await;
    let mut client = OrderServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let placed = client
        .place_order(sample_order("backup-1", "US"))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();

    // pg_dump while Orders runs, pg_restore into a new empty database.
    let dump = std::env::temp_dir().join(format!("waybill-backup-{}.dump", placed.id));
    let dump_path = dump.to_str().unwrap();
    tool(
        "pg_dump",
        &["--format=custom", "--file", dump_path, &live.url],
    );
    drop(orders);
    let restored = TestDatabase::create(TestBackend::Postgres).await;
    tool(
        "pg_restore",
        &["--dbname", &restored.url, "--no-owner", dump_path],
    );
    let _ = std::fs::remove_file(&dump);

    let check = waybill(&["migrate", "--database-url", &restored.url, "--check"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    let (_orders, addr) = start_orders(&restored.url, &["--migrate-on-start", "false"]).await;
    let mut client = OrderServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let read = client
        .get_order(pb::GetOrderRequest {
            order_id: placed.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.id, placed.id);
    assert_eq!(read.total, placed.total);
    assert_eq!(read.lines, placed.lines);
    // The idempotency key came back with it: placing again answers the same order.
    let again = client
        .place_order(sample_order("backup-1", "US"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        again.replayed,
        "the restored key must answer the earlier order"
    );
    assert_eq!(again.order.unwrap().id, placed.id);
}

/// An unreachable or malformed database is an error (exit 1) that says so, not a verdict.
#[test]
fn a_database_it_cannot_open_is_an_error_not_a_verdict() {
    let output = waybill(&["migrate", "--database-url", "mysql://nowhere/x", "--check"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("invalid database url"),
        "{}",
        text(&output)
    );
}

on_both_backends!(an_operator_migrates_before_starting_the_services);
