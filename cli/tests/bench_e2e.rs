//! `waybill bench e2e`, the real binary, briefly: a tiny fixed rate on the embedded defaults
//! (SQLite) and on Postgres, every order through to the in-process partner, each hop measured
//! and the ledger balanced; an order lost on purpose voids the run; `--find-max` steps its
//! rates as its search says and sets the result beside the bare limits (Postgres). Not timed
//! tests: no figure is compared with a time.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use serde_json::Value;
use waybill_test_kit::{TestBackend, TestDatabase};

/// The hops, in the order the bench reports them.
const HOPS: [&str; 10] = [
    "placing (gRPC + commit)",
    "committed → leased",
    "leased → produce acknowledged",
    "produced → consumed",
    "consumed → stored in the inbox",
    "inbox → adapter called",
    "adapter called → answered",
    "answered → answer stored",
    "answer stored → report sent",
    "report sent → recorded by StatusIngest",
];

/// Runs `bench e2e --json` with `args` (on `database_url`, else the embedded defaults); its
/// exit, its last stdout line as JSON, and its stderr.
fn run(database_url: Option<&str>, args: &[&str]) -> (Output, Value, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_waybill"));
    command
        .args(["bench", "e2e", "--json"])
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("WAYBILL_DATABASE_URL")
        .env_remove("WAYBILL_KAFKA_BROKERS");
    if let Some(url) = database_url {
        command.args(["--database-url", url]);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no JSON on the last line:\n{stdout}\n{stderr}"));
    (output, report, stderr)
}

fn ms(value: &Value, key: &str) -> f64 {
    value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} in {value:#}"))
}

/// Every order of a step received, each hop measured on each order, the figures consistent.
fn check_step(step: &Value, orders: u64) {
    assert_eq!(step["offered"], orders, "{step:#}");
    assert_eq!(step["placed"], orders, "{step:#}");
    assert_eq!(step["errors"], 0, "{step:#}");
    assert_eq!(step["at_adapter"], orders, "{step:#}");
    assert_eq!(step["received"], orders, "{step:#}");
    assert_eq!(step["cut_off"], "all_confirmed", "{step:#}");
    let ledger = &step["ledger"];
    assert_eq!(
        (
            &ledger["placed"],
            &ledger["received"],
            &ledger["in_flight"],
            &ledger["lost"]
        ),
        (
            &Value::from(orders),
            &Value::from(orders),
            &Value::from(0),
            &Value::from(0)
        ),
        "{step:#}"
    );
    assert_eq!(ledger["balanced"], true, "{step:#}");
    assert_eq!(ledger["void"], false, "{step:#}");
    assert_eq!(ledger["answered_twice"], 0, "{step:#}");
    // What the step cost in CPU, per order: the whole machine's and this process's (which runs
    // the whole loop here), and the machine's busy share.
    let cpu = &step["cpu"];
    assert!(ms(cpu, "machine_ms_per_order") > 0.0, "{cpu:#}");
    assert!(ms(cpu, "process_ms_per_order") > 0.0, "{cpu:#}");
    let busy = ms(cpu, "machine_busy");
    assert!(busy > 0.0 && busy <= 1.0, "{cpu:#}");
    assert!(cpu["cpus"].as_u64().unwrap() >= 1, "{cpu:#}");
    let total = &step["to_received_ms"];
    let hops = step["hops"].as_array().unwrap();
    let names: Vec<&str> = hops.iter().map(|h| h["hop"].as_str().unwrap()).collect();
    assert_eq!(names, HOPS, "{step:#}");
    for hop in hops {
        assert_eq!(hop["orders"], orders, "{hop:#}");
        let (p50, p99, max) = (ms(hop, "p50"), ms(hop, "p99"), ms(hop, "max"));
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{hop:#}");
        // Every point of a journey lies between its scheduled send and its receipt (1 ms for
        // placing the database's wall-clock receipt on the bench's monotonic clock).
        assert!(max <= ms(total, "max") + 1.0, "{hop:#} beyond {total:#}");
    }
    // Placing is the first hop and the total to it, from the same samples.
    for key in ["p50", "p99", "max"] {
        assert_eq!(ms(&hops[0], key), ms(&step["place_ms"], key), "{step:#}");
    }
    assert!(ms(&step["to_adapter_ms"], "max") <= ms(total, "max") + 1.0);
    assert!(ms(total, "p50") >= ms(&step["place_ms"], "p50"), "{step:#}");
    // Every received order was received by the cut-off: the two totals agree.
    assert_eq!(total, &step["to_received_all_ms"], "{step:#}");
    let backlog = step["backlog"].as_array().unwrap();
    assert!(!backlog.is_empty(), "{step:#}");
    assert!(
        backlog
            .iter()
            .all(|s| s["backlog"].as_u64().unwrap() <= orders),
        "{step:#}"
    );
}

fn bench(database_url: Option<&str>) -> Value {
    let (output, report, stderr) = run(database_url, &["--rate", "20", "--duration", "1"]);
    assert!(output.status.success(), "{report:#}\n{stderr}");
    assert!(
        stderr.contains("offering 20 orders"),
        "progress on stderr: {stderr}"
    );
    assert_eq!(report["benchmark"], "e2e");
    assert_eq!(report["void"], false, "{report:#}");
    check_step(&report, 20);
    assert!(report["peak_rss_mib"].as_f64().unwrap() > 1.0);
    report
}

#[test]
fn bench_e2e_on_the_embedded_defaults() {
    let report = bench(None);
    assert!(
        report["storage"].as_str().unwrap().starts_with("sqlite://"),
        "{report:#}"
    );
    assert_eq!(report["broker"], "embedded broker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_e2e_on_postgres() {
    let db = TestDatabase::create(TestBackend::Postgres).await;
    let url = db.url.clone();
    let report = tokio::task::spawn_blocking(move || bench(Some(&url)))
        .await
        .unwrap();
    assert!(
        report["storage"]
            .as_str()
            .unwrap()
            .starts_with("postgres://"),
        "{report:#}"
    );
}

/// `--processes`: Orders, the dispatcher, StatusIngest and the partner each a process of its
/// own on one Postgres database and a Tansu broker process; every order received, each
/// process's peak memory read and under the limit, each stopped cleanly, the re-sends counted
/// (none: the deadline is far away), the bench's own index dropped; a limit below any
/// process's memory fails the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_e2e_with_each_service_a_process_of_its_own() {
    let db = TestDatabase::create(TestBackend::Postgres).await;
    let broker = waybill_test_kit::broker::TestBroker::tansu();
    // `bench e2e --processes` on the test's database and broker, with `args`.
    let processes_run = |args: &'static [&'static str]| {
        let (url, brokers) = (db.url.clone(), broker.bootstrap_servers().to_owned());
        tokio::task::spawn_blocking(move || {
            let mut all = vec!["--processes", "--kafka-brokers", &brokers];
            all.extend(args);
            run(Some(&url), &all)
        })
    };
    let (output, report, stderr) = processes_run(&["--rate", "20", "--duration", "2"])
        .await
        .unwrap();
    assert!(output.status.success(), "{report:#}\n{stderr}");
    assert_eq!(report["received"], 40, "{report:#}");
    assert_eq!(report["cut_off"], "all_confirmed", "{report:#}");
    let ledger = &report["ledger"];
    assert_eq!(
        (&ledger["lost"], &ledger["void"]),
        (&Value::from(0), &Value::from(false))
    );
    assert_eq!(ledger["answers_checked"], false, "{report:#}");
    assert_eq!(
        (&ledger["resends"], &ledger["resent_orders"]),
        (&Value::from(0), &Value::from(0))
    );
    // Placing is measured; the steps inside other processes are not, and say so by count.
    let hops = report["hops"].as_array().unwrap();
    assert_eq!(hops[0]["orders"], 40, "{report:#}");
    assert!(hops[1..].iter().all(|hop| hop["orders"] == 0), "{report:#}");
    let processes = report["processes"].as_array().unwrap();
    let roles: Vec<&str> = processes
        .iter()
        .map(|p| p["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["orders", "status-ingest", "dispatcher", "partner"]);
    // The poll's own index went with the run: the database is left as the services made it.
    let waybill_service_kit::db::Backend::Postgres(pool) = db.connect().await.backend().clone()
    else {
        panic!("a Postgres test database");
    };
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_indexes WHERE indexname = 'bench_e2e_received'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, 0, "the bench's index was left behind");
    for process in processes {
        let peak = process["peak_rss_mib"].as_f64().unwrap();
        assert!(peak > 1.0 && peak <= 64.0, "{process:#}");
        assert!(
            process["cpu_seconds"].as_f64().unwrap() > 0.0,
            "{process:#}"
        );
        assert_eq!(process["clean_exit"], true, "{process:#}");
    }

    // The same run with a limit no process can meet fails, naming the process.
    let (output, _, stderr) =
        processes_run(&["--rate", "5", "--duration", "1", "--rss-limit-mib", "1"])
            .await
            .unwrap();
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("process's peak resident set") && stderr.contains("--rss-limit-mib 1"),
        "{stderr}"
    );
}

/// The adapter fails the fifth order permanently (the bench's hidden fault): the connector
/// sets it aside, it stays SENT and unanswered, the loop goes quiet, and the ledger must
/// count it lost and void the run.
#[test]
fn an_order_lost_on_the_way_voids_the_run() {
    let (output, report, stderr) = run(
        None,
        &[
            "--rate",
            "20",
            "--duration",
            "1",
            "--lose-order",
            "5",
            "--quiet-secs",
            "2",
        ],
    );
    assert!(!output.status.success(), "{report:#}\n{stderr}");
    assert!(stderr.contains("void"), "{stderr}");
    assert_eq!(report["void"], true, "{report:#}");
    let ledger = &report["ledger"];
    assert_eq!(ledger["void"], true, "{report:#}");
    assert_eq!(ledger["balanced"], false, "{report:#}");
    // The injected loss at least (an order whose report is lost on its own is counted too:
    // its last step is the report, not the adapter).
    let count = |key: &str| ledger[key].as_u64().unwrap();
    assert_eq!(count("placed"), 20, "{report:#}");
    assert!(count("lost") >= 1, "{report:#}");
    assert_eq!(count("received") + count("lost"), 20, "{report:#}");
    assert_eq!(count("in_flight"), 0, "{report:#}");
    assert_eq!(report["cut_off"], "quiet", "{report:#}");
    let reasons: Vec<&str> = ledger["void_reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let injected = reasons
        .iter()
        .find(|r| {
            r.contains("SENT, no RECEIVED_BY_PARTNER recorded") && r.contains("adapter_called")
        })
        .unwrap_or_else(|| panic!("the injected loss among the reasons: {report:#}"));
    assert!(stderr.contains(injected), "{stderr}");
}

/// The rates `--find-max` offered follow its search: ×1.5 after a pass, halfway down after a
/// failure; the result is the highest passing rate.
fn check_search(report: &Value, start: f64) {
    assert_eq!(report["benchmark"], "e2e-find-max", "{report:#}");
    assert_eq!(report["void"], false, "{report:#}");
    let steps = report["steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "{report:#}");
    let mut expected = start;
    let mut passed: Vec<f64> = Vec::new();
    for step in steps {
        let rate = step["rate_per_s"].as_f64().unwrap();
        assert_eq!(rate, expected, "{report:#}");
        assert_eq!(step["ledger"]["void"], false, "{step:#}");
        assert_eq!(step["ledger"]["balanced"], true, "{step:#}");
        let failures = step["failures"].as_array().unwrap();
        assert_eq!(step["passed"], failures.is_empty(), "{step:#}");
        if step["passed"] == true {
            check_step(step, (rate * 2.0) as u64);
            assert!(ms(&step["to_received_all_ms"], "p99") <= 1000.0, "{step:#}");
            passed.push(rate);
            expected = (rate * 1.5).round();
        } else {
            expected = (rate / 2.0).round();
        }
    }
    let best = passed.iter().copied().reduce(f64::max);
    assert_eq!(report["sustainable_per_s"].as_f64(), best, "{report:#}");
    assert_eq!(
        report["bounded"],
        steps.iter().any(|s| s["passed"] == false),
        "{report:#}"
    );
}

const FIND_MAX: [&str; 8] = [
    "--find-max",
    "--start-rate",
    "20",
    "--step-secs",
    "2",
    "--max-steps",
    "2",
    "--refine=1",
];

#[test]
fn find_max_steps_the_rate_on_the_embedded_defaults_without_limits() {
    let (output, report, stderr) = run(None, &FIND_MAX);
    assert!(output.status.success(), "{report:#}\n{stderr}");
    check_search(&report, 20.0);
    // Both bare limits are defined on Postgres: none here, and no ratio.
    assert!(report["limits"]["bookkeeping"].is_null(), "{report:#}");
    assert!(report["limits"]["report_raw_per_s"].is_null(), "{report:#}");
    assert!(report["ratio"].is_null(), "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_max_on_postgres_sets_the_rate_beside_the_lower_bare_limit() {
    let db = TestDatabase::create(TestBackend::Postgres).await;
    let url = db.url.clone();
    let (output, report, stderr) = tokio::task::spawn_blocking(move || {
        let mut args = FIND_MAX.to_vec();
        args.extend(["--limit-orders", "1000", "--limit-reports", "200"]);
        run(Some(&url), &args)
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{report:#}\n{stderr}");
    check_search(&report, 20.0);
    let limits = &report["limits"];
    assert_eq!(limits["bookkeeping_before"]["orders"], 1000, "{report:#}");
    assert_eq!(limits["bookkeeping_after"]["orders"], 1000, "{report:#}");
    assert_eq!(limits["bookkeeping"]["orders"], 2000, "{report:#}");
    let bookkeeping = ms(&limits["bookkeeping"], "orders_per_second");
    let (before, after) = (
        ms(limits, "report_raw_before_per_s"),
        ms(limits, "report_raw_after_per_s"),
    );
    let report_raw = ms(limits, "report_raw_per_s");
    assert!(
        bookkeeping > 0.0 && before > 0.0 && after > 0.0,
        "{report:#}"
    );
    // The bookkeeping limit is its two runs together: their orders over their seconds.
    let seconds = |rate: &str| ms(&limits[rate], "seconds");
    assert!(
        (seconds("bookkeeping") - seconds("bookkeeping_before") - seconds("bookkeeping_after"))
            .abs()
            < 1e-6,
        "{report:#}"
    );
    assert!(
        (bookkeeping * seconds("bookkeeping") - 2000.0).abs() < 1e-6 * 2000.0,
        "{report:#}"
    );
    assert!(
        (report_raw - 2.0 / (1.0 / before + 1.0 / after)).abs() < 1e-6,
        "{report:#}"
    );
    let lower = ms(&report, "lower_limit_per_s");
    assert_eq!(lower, bookkeeping.min(report_raw), "{report:#}");
    assert_eq!(
        report["lower_limit"],
        if bookkeeping <= report_raw {
            "relay bookkeeping"
        } else {
            "report raw writes"
        },
        "{report:#}"
    );
    let ratio = ms(&report, "ratio");
    let sustainable = ms(&report, "sustainable_per_s");
    assert!((ratio - sustainable / lower).abs() < 1e-9, "{report:#}");
}

/// The same lost order in a `--find-max` step: the step fails as void, the search stops there
/// and the run has no figure.
#[test]
fn find_max_with_an_order_lost_is_void_and_has_no_figure() {
    let (output, report, stderr) = run(
        None,
        &[
            "--find-max",
            "--start-rate",
            "20",
            "--step-secs",
            "1",
            "--lose-order",
            "5",
            "--quiet-secs",
            "2",
        ],
    );
    assert!(!output.status.success(), "{report:#}\n{stderr}");
    assert!(stderr.contains("void"), "{stderr}");
    assert_eq!(report["void"], true, "{report:#}");
    assert!(report["sustainable_per_s"].is_null(), "{report:#}");
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(
        steps.len(),
        1,
        "the search stops at the void step: {report:#}"
    );
    assert_eq!(steps[0]["passed"], false, "{report:#}");
    assert!(
        steps[0]["ledger"]["lost"].as_u64().unwrap() >= 1,
        "{report:#}"
    );
    assert_eq!(report["stopped"], "a step's ledger is void", "{report:#}");
}
