//! `waybill partner-check` against real adapters: the example partners (the connector SDK, run
//! by `waybill partner`) and the Python reference partner pass every scenario; a deliberately
//! broken Python adapter (`broken_partner.py --defect …`) fails exactly the scenarios its
//! defect breaks and passes the others it is run on. Each run's JSON report is read back, and
//! the table is checked to be printed.
//!
//! Run time: the full matrix for both example partners and the Python reference, a subset for
//! each defect (the scenarios that exercise the defect, and a few that must still pass).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // the process helpers this file does not use
#[path = "common/processes.rs"]
mod processes;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use processes::python_libraries;

/// The scenarios a defect is checked on: every one a defect below breaks, and two it must not.
const DEFECT_SUBSET: &[&str] = &[
    "same-record-twice",
    "resend-higher-count",
    "restart-redelivery",
    "restart-during-outage",
    "replay-refused",
    "second-region",
    "rejection",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What one run of the kit said.
struct Run {
    code: i32,
    table: String,
    json: serde_json::Value,
}

impl Run {
    fn verdicts(&self, verdict: &str) -> BTreeSet<String> {
        self.json["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["verdict"] == verdict)
            .map(|s| s["scenario"].as_str().unwrap().to_owned())
            .collect()
    }

    fn broken_promises(&self) -> String {
        self.json["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["verdict"] == "fail")
            .map(|s| format!("{}: {}", s["scenario"], s["broken_promise"]))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs `waybill partner-check` on `start` for `scenarios` (all when empty).
fn check(partner_id: &str, start: &str, scenarios: &[&str]) -> Run {
    let dir = tempfile_dir(partner_id);
    let json = dir.join("report.json");
    let mut command = Command::new(env!("CARGO_BIN_EXE_waybill"));
    command
        .current_dir(workspace())
        .args([
            "partner-check",
            "--partner-id",
            partner_id,
            "--start",
            start,
        ])
        .args(["--seed", "7", "--timeout-secs", "20", "--json"])
        .arg(&json)
        .arg("--work-dir")
        .arg(dir.join("work"));
    for scenario in scenarios {
        command.args(["--scenario", scenario]);
    }
    let output = command.output().expect("run waybill partner-check");
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    let text = std::fs::read_to_string(&json).unwrap_or_else(|_| {
        panic!(
            "no JSON report; stdout:\n{table}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        table,
        json: serde_json::from_str(&text).unwrap(),
    };
    assert_eq!(run.json["seed"], 7);
    assert!(run.table.contains("scenario"), "{}", run.table);
    run
}

fn tempfile_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "waybill-partner-check-test-{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn assert_all_pass(run: &Run, expected: usize) {
    assert_eq!(
        run.verdicts("fail"),
        BTreeSet::new(),
        "{}\n{}",
        run.broken_promises(),
        run.table
    );
    assert_eq!(run.verdicts("pass").len(), expected, "{}", run.table);
    assert_eq!(run.code, 0, "{}", run.table);
    assert_eq!(run.json["passed"], true);
}

#[test]
fn distance_freight_passes_every_scenario() {
    let start = format!(
        "exec {} partner distance-freight --inbox \"$WAYBILL_CHECK_DIR/inbox.db\"",
        env!("CARGO_BIN_EXE_waybill")
    );
    let run = check("distance-freight", &start, &[]);
    assert_all_pass(&run, 13);
    assert!(
        run.table.contains("13 of 13 scenarios passed"),
        "{}",
        run.table
    );
}

#[test]
fn local_express_passes_every_scenario() {
    let start = format!(
        "exec {} partner local-express --shipped-after-ms 300 --inbox \"$WAYBILL_CHECK_DIR/inbox.db\"",
        env!("CARGO_BIN_EXE_waybill")
    );
    let run = check("local-express", &start, &[]);
    assert_all_pass(&run, 13);
}

#[test]
fn the_python_reference_partner_passes_every_scenario() {
    waybill_test_kit::require!(
        python_libraries(),
        "python3 with confluent_kafka, grpc, grpc_tools, jwt, protobuf and cryptography"
    );
    let start = "exec python3 examples/partners/python/partner.py \
        --db \"$WAYBILL_CHECK_DIR/shipments.db\" \
        --kafka-option session.timeout.ms=$WAYBILL_KAFKA_SESSION_TIMEOUT_MS \
        --kafka-option fetch.wait.max.ms=$WAYBILL_KAFKA_FETCH_WAIT_MS";
    let run = check("pyexpress", start, &[]);
    assert_all_pass(&run, 13);
}

/// `broken_partner.py --defect <defect>` on [`DEFECT_SUBSET`]: exactly `fails` fail.
fn defect_fails_exactly(defect: &str, fails: &[&str], promise: &str) {
    let start = format!("exec python3 cli/tests/broken_partner.py --defect {defect}");
    let run = check("broken", &start, DEFECT_SUBSET);
    let expected: BTreeSet<String> = fails.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(run.verdicts("fail"), expected, "{}", run.table);
    assert_eq!(
        run.verdicts("pass").len(),
        DEFECT_SUBSET.len() - fails.len(),
        "{}",
        run.table
    );
    assert_eq!(run.code, 1, "{}", run.table);
    assert_eq!(run.json["passed"], false);
    for scenario in run.json["scenarios"].as_array().unwrap() {
        if scenario["verdict"] == "fail" {
            let said = scenario["broken_promise"].as_str().unwrap();
            assert!(said.contains(promise), "{said:?} should name {promise:?}");
        }
    }
}

#[test]
fn a_partner_that_is_not_idempotent_fails_the_redelivery_scenarios() {
    waybill_test_kit::require!(python_libraries(), "python3 with the partner libraries");
    defect_fails_exactly(
        "not-idempotent",
        &[
            "same-record-twice",
            "resend-higher-count",
            "restart-redelivery",
        ],
        "the second delivery created a second shipment",
    );
}

#[test]
fn a_partner_that_commits_before_reporting_fails_the_restart_scenarios() {
    waybill_test_kit::require!(python_libraries(), "python3 with the partner libraries");
    defect_fails_exactly(
        "commit-first",
        &["restart-redelivery", "restart-during-outage"],
        "offset committed before the report was accepted or stored",
    );
}

#[test]
fn a_partner_that_ignores_the_reply_to_fails_the_second_region() {
    waybill_test_kit::require!(python_libraries(), "python3 with the partner libraries");
    defect_fails_exactly(
        "ignore-reply-to",
        &["second-region"],
        "ignored the reply-to: reported order",
    );
}

#[test]
fn a_partner_that_loops_on_a_replay_refusal_fails_replay_refused() {
    waybill_test_kit::require!(python_libraries(), "python3 with the partner libraries");
    defect_fails_exactly(
        "loop-on-replay",
        &["replay-refused"],
        "looped on a replay refusal",
    );
}

#[test]
fn bad_flags_are_a_usage_error() {
    for args in [
        &["--partner-id", "Not_Valid", "--start", "true"][..],
        &["--partner-id", "acme", "--start", " "],
        &[
            "--partner-id",
            "acme",
            "--start",
            "true",
            "--scenario",
            "no-such",
        ],
        &[
            "--partner-id",
            "acme",
            "--start",
            "true",
            "--timeout-secs",
            "0",
        ],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_waybill"))
            .arg("partner-check")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("error: --"), "{args:?}: {stderr}");
    }
}
