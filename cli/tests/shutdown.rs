//! Stopping and logging around a broker that is not there, with the real binary: a dispatcher
//! exits within seconds of SIGTERM while its broker refuses connections, while it accepts them
//! and never answers (a host that stopped answering), and while it is `waybill dev`'s embedded
//! broker (librdkafka's mock cluster, which has no Admin API); a partner whose broker is down
//! says so in a few JSON lines, none carrying the build machine's source paths.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "common/processes.rs"]
mod processes;

use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use processes::{Service, free_addr, wait_serving};
use serde_json::Value;

/// How soon after SIGTERM a process must be gone (the bug: about a minute, or never).
const EXIT_BOUND: Duration = Duration::from_secs(10);

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("waybill-{what}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A broker address whose host accepts connections and never answers a byte.
fn silent_broker() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    addr
}

/// Starts a dispatcher on its own SQLite database against `brokers`, waits until it serves,
/// lets its start-up (topic creation) get under way, sends SIGTERM and asserts a clean exit
/// within [`EXIT_BOUND`].
async fn dispatcher_stops_promptly(brokers: &str, what: &str) {
    let dir = temp_dir("shutdown");
    let listen = free_addr();
    let args = [
        "dispatcher",
        "--listen",
        &listen.to_string(),
        "--database-url",
        &format!("sqlite://{}", dir.join("dispatcher.db").display()),
        "--kafka-brokers",
        brokers,
        "--produce-timeout",
        "2s",
        "--poll-interval",
        "250ms",
    ];
    let mut dispatcher = Service::start(
        "dispatcher",
        args.iter().map(|a| (*a).to_owned()).collect(),
        &dir,
    );
    wait_serving(listen, "dispatcher", &dispatcher.log).await;
    // Start-up topic creation is now waiting for a broker that does not answer it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopped = dispatcher.terminate_within(EXIT_BOUND);
    let log = std::fs::read_to_string(&dispatcher.log).unwrap_or_default();
    let Some((status, took)) = stopped else {
        panic!("dispatcher ({what}) still running {EXIT_BOUND:?} after SIGTERM; its log:\n{log}");
    };
    assert!(
        status.success(),
        "dispatcher ({what}) exit {status}:\n{log}"
    );
    eprintln!("dispatcher ({what}) exited {took:?} after SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_whose_broker_is_unreachable_stops_promptly_on_sigterm() {
    // Nothing listens there: every connection is refused.
    let refused = free_addr();
    dispatcher_stops_promptly(&refused.to_string(), "connection refused").await;
    dispatcher_stops_promptly(&silent_broker().to_string(), "broker never answers").await;
}

/// A `waybill dev` process, killed when dropped (also when an assertion fails first).
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `waybill dev` in `dir`; returns it and its embedded broker's address (from its banner).
fn start_dev(dir: &Path) -> (Dev, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_waybill"))
        .current_dir(dir)
        .arg("dev")
        .args(["--orders-listen", &free_addr().to_string()])
        .args(["--dispatcher-listen", &free_addr().to_string()])
        .args(["--status-ingest-listen", &free_addr().to_string()])
        .args(["--metrics-listen", &free_addr().to_string()])
        .env_remove("WAYBILL_DATABASE_URL")
        .env_remove("WAYBILL_KAFKA_BROKERS")
        .env_remove("WAYBILL_DATA_DIR")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let dev = Dev(child);
    // "  kafka          127.0.0.1:PORT (embedded, in memory: …)"
    let brokers = stdout.lines().map_while(Result::ok).find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("kafka")).then(|| words.next().map(str::to_owned))?
    });
    let Some(brokers) = brokers else {
        panic!("no kafka line in waybill dev's banner");
    };
    (dev, brokers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_on_the_dev_embedded_broker_stops_on_sigterm() {
    let dir = temp_dir("shutdown-dev");
    let (dev, brokers) = start_dev(&dir);
    dispatcher_stops_promptly(&brokers, "waybill dev's embedded broker").await;
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_partner_whose_broker_is_down_says_so_in_a_few_json_lines_without_build_paths() {
    let dir = temp_dir("partner-down");
    let key_file = dir.join("local-express.pem");
    std::fs::write(
        &key_file,
        waybill_token::keys::signing_key_to_pem(&waybill_token::SigningKey::from_bytes(&[7; 32]))
            .unwrap(),
    )
    .unwrap();
    let log_file = dir.join("partner.log");
    let mut partner = Command::new(env!("CARGO_BIN_EXE_waybill"))
        .args(["--log-format", "json", "partner", "local-express"])
        .args(["--kafka-brokers", &free_addr().to_string()])
        .args(["--key-file", key_file.to_str().unwrap()])
        .args(["--key-id", "k1"])
        .args(["--inbox", dir.join("inbox.db").to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_file).unwrap())
        .spawn()
        .unwrap();
    // librdkafka retries the connection several times a second meanwhile.
    std::thread::sleep(Duration::from_secs(4));
    let _ = partner.kill();
    let _ = partner.wait();
    let log = std::fs::read_to_string(&log_file).unwrap();

    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    for line in &lines {
        let fields = line["fields"].as_object().unwrap();
        assert!(
            fields.keys().all(|name| !name.starts_with("log.")),
            "a log-bridge field: {line}"
        );
    }
    assert!(!log.contains(".cargo/registry"), "build paths:\n{log}");
    // librdkafka's lines (targets `librdkafka`, `rdkafka::…`) and the consumer's poll errors.
    let about_the_broker: Vec<&Value> = lines
        .iter()
        .filter(|line| {
            line["target"]
                .as_str()
                .is_some_and(|target| target.contains("rdkafka"))
                || line["fields"]["message"] == "consumer error"
        })
        .collect();
    assert!(
        lines.iter().any(|line| line["level"] == "WARN"
            && line["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("kafka brokers down"))),
        "the outage is told:\n{log}"
    );
    assert!(
        about_the_broker.len() <= 5,
        "{} lines about the broker in 4 s:\n{log}",
        about_the_broker.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
