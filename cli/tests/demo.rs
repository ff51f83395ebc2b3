//! `waybill demo --json`, the real binary, as a person runs it on a fresh machine: every
//! sample order takes its path (acknowledged by each partner, audited, rejected and re-routed,
//! unroutable) and the JSON on the last line says so; its stderr, a pipe, gets no colour codes.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use serde_json::Value;

#[test]
fn the_demo_shows_every_path_and_exits_zero() {
    let started = std::time::Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_waybill"))
        .args(["demo", "--json"])
        // A few service lines among the progress lines, to see how they are written.
        .env("RUST_LOG", "warn,waybill_dispatcher=info")
        .env_remove("NO_COLOR")
        .env_remove("WAYBILL_DATABASE_URL")
        .env_remove("WAYBILL_KAFKA_BROKERS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    // Progress on stderr, the result alone on stdout's last line.
    assert!(stderr.contains("placed #1"), "{stderr}");
    // stderr is a pipe here: plain text, no colour escape codes around the log lines.
    assert!(stderr.contains("relay started"), "{stderr}");
    assert!(
        !stderr.contains("\x1b["),
        "colour codes in a redirected stderr:\n{stderr}"
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(result["ok"], true, "{result:#}");
    assert_eq!(result["failures"].as_array().unwrap().len(), 0);
    assert!(started.elapsed().as_secs() < 60, "seconds, not minutes");

    let orders = result["orders"].as_array().unwrap();
    let order = |name: &str| {
        orders
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("no {name} order in {result:#}"))
    };
    let statuses = |o: &Value| -> Vec<(String, String)> {
        o["journey"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["status"].as_str().unwrap().to_owned(),
                    s["partner_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let step = |status: &str, partner: &str| (status.to_owned(), partner.to_owned());

    let local = order("local");
    assert_eq!(local["acknowledged_by"], "local-express");
    assert!(local["tracking_id"].as_str().unwrap().starts_with("LX-"));
    let journey = statuses(local);
    assert_eq!(journey[0], step("PLACED", ""));
    assert!(journey.contains(&step("RECEIVED_BY_PARTNER", "local-express")));
    assert!(journey.contains(&step("SHIPPED", "local-express")));
    assert_eq!(local["audit"], false);

    let far = order("long-distance");
    assert_eq!(far["acknowledged_by"], "distance-freight");
    assert!(far["tracking_id"].as_str().unwrap().starts_with("DF"));
    assert_eq!(far["partners"], serde_json::json!(["distance-freight"]));

    let audit = order("audit");
    assert_eq!(audit["audit"], true);
    assert_eq!(audit["acknowledged_by"], "distance-freight");
    assert_eq!(audit["audit_copy"], true, "read back from the audit topic");
    assert_eq!(result["audit_copies"], 1);

    // Rejected by local-express, then sent to and acknowledged by distance-freight, in order.
    let rejected = order("rejected");
    assert_eq!(rejected["rerouted"], true);
    assert_eq!(rejected["acknowledged_by"], "distance-freight");
    assert_eq!(
        rejected["partners"],
        serde_json::json!(["local-express", "distance-freight"])
    );
    let journey = statuses(rejected);
    let at = |s: (String, String)| journey.iter().position(|j| *j == s).unwrap();
    assert!(
        at(step("SENT_TO_PARTNER", "local-express"))
            < at(step("REJECTED_BY_PARTNER", "local-express"))
    );
    assert!(
        at(step("REJECTED_BY_PARTNER", "local-express"))
            < at(step("SENT_TO_PARTNER", "distance-freight"))
    );
    assert!(
        at(step("SENT_TO_PARTNER", "distance-freight"))
            < at(step("RECEIVED_BY_PARTNER", "distance-freight"))
    );
    let times: Vec<i64> = rejected["journey"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["after_ms"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    let unroutable = order("unroutable");
    assert_eq!(unroutable["unroutable"], true);
    assert_eq!(unroutable["dispatch_state"], "UNROUTABLE");
    assert!(unroutable["acknowledged_by"].is_null());
    assert_eq!(
        statuses(unroutable).last().unwrap(),
        &step("UNROUTABLE", "")
    );
}

#[test]
fn the_demo_table_lists_each_journey() {
    let output = Command::new(env!("CARGO_BIN_EXE_waybill"))
        .args(["demo"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("waybill demo: 5 orders"), "{stdout}");
    assert!(stdout.contains("OK"), "{stdout}");
    for needle in [
        "REJECTED_BY_PARTNER",
        "RECEIVED_BY_PARTNER",
        "UNROUTABLE",
        "[audit: copy on the audit topic]",
        "(OUT_OF_AREA)",
    ] {
        assert!(stdout.contains(needle), "{needle} missing:\n{stdout}");
    }
}

#[test]
fn the_demo_fails_clearly_when_orders_do_not_arrive_in_time() {
    // With no time to travel (local-express reports SHIPPED half a second after accepting),
    // the demo must say which orders did not arrive and exit 1.
    let output = Command::new(env!("CARGO_BIN_EXE_waybill"))
        .args(["demo", "--json", "--timeout-secs", "0"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(result["ok"], false);
    let failures = result["failures"].as_array().unwrap();
    assert!(
        failures.iter().any(|f| f
            .as_str()
            .unwrap()
            .contains("was not acknowledged and reported shipped by local-express within 0 s")),
        "{failures:?}"
    );
    assert!(stderr.contains("waybill demo: FAILED: order "), "{stderr}");
}
