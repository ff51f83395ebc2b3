//! What an operator connecting Waybill to real infrastructure sees from the command line:
//! Kafka settings this build cannot honour are refused before anything listens (exit 64,
//! naming what the build supports), a broker certificate from the wrong CA is refused with a
//! clear error in the log, and the production services store nowhere they were not told to.
#![allow(clippy::unwrap_used)]

use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use processes::{free_addr, wait_serving};
use waybill_test_kit::{broker::TestBroker, tls::TestPki};

#[allow(dead_code)] // the process helpers this file does not use
#[path = "common/processes.rs"]
mod processes;

fn temp_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("waybill-{what}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn waybill(args: &[&str], cwd: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_waybill"))
        .args(args)
        .current_dir(cwd)
        .env_remove("WAYBILL_DATABASE_URL")
        .env_remove("WAYBILL_KAFKA_OPTIONS")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

#[test]
fn kafka_settings_the_build_cannot_honour_stop_start_up_with_exit_64() {
    let dir = temp_dir("kafka-settings");
    let db = format!("sqlite://{}", dir.join("w.db").display());
    let listen = free_addr().to_string();
    // Kerberos needs Cyrus SASL, which this build leaves out; the CA file does not exist.
    for options in [
        "security.protocol=SASL_SSL,sasl.mechanism=GSSAPI",
        "security.protocol=SSL,ssl.ca.location=/nonexistent/ca.pem",
    ] {
        let output = waybill(
            &[
                "dispatcher",
                "--listen",
                &listen,
                "--database-url",
                &db,
                "--kafka-brokers",
                "127.0.0.1:9",
                "--kafka-option",
                options,
            ],
            &dir,
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{options}: {stderr}");
        assert!(stderr.contains("kafka settings refused"), "{stderr}");
        assert!(
            stderr.contains("SASL_SSL") && stderr.contains("SCRAM-SHA-512"),
            "names what the build supports: {stderr}"
        );
        // Refused before the database was opened or the listener bound.
        assert!(!dir.join("w.db").exists(), "{stderr}");
    }

    // The partner's connector alike, before it opens its inbox.
    let key = dir.join("partner.pem");
    std::fs::write(
        &key,
        waybill_token::keys::signing_key_to_pem(&waybill_token::SigningKey::from_bytes(&[5; 32]))
            .unwrap(),
    )
    .unwrap();
    let inbox = dir.join("inbox.db");
    let output = waybill(
        &[
            "partner",
            "local-express",
            "--kafka-brokers",
            "127.0.0.1:9",
            "--key-file",
            key.to_str().unwrap(),
            "--key-id",
            "k1",
            "--inbox",
            inbox.to_str().unwrap(),
            "--kafka-option",
            "security.protocol=SASL_SSL,sasl.mechanism=GSSAPI",
        ],
        &dir,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("GSSAPI") && stderr.contains("SCRAM-SHA-256"),
        "{stderr}"
    );
    assert!(!inbox.exists(), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn production_services_need_a_database_url_and_create_nothing_without_one() {
    let dir = temp_dir("no-database");
    for command in ["orders", "dispatcher", "status-ingest"] {
        let output = waybill(&[command, "--listen", &free_addr().to_string()], &dir);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{command}: {stderr}");
        assert!(stderr.contains("--database-url"), "{command}: {stderr}");
        assert!(stderr.contains("waybill dev"), "{command}: {stderr}");
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing was created in the working directory"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_broker_certificate_from_the_wrong_ca_is_refused_and_said_so() {
    let broker = TestBroker::tansu_tls();
    let dir = temp_dir("wrong-ca");
    let stranger = TestPki::new();
    let log = dir.join("dispatcher.log");
    let listen = free_addr();
    let mut dispatcher = Command::new(env!("CARGO_BIN_EXE_waybill"))
        .args(["dispatcher", "--listen", &listen.to_string()])
        .args([
            "--database-url",
            &format!("sqlite://{}", dir.join("w.db").display()),
        ])
        .args(["--kafka-brokers", broker.bootstrap_servers()])
        .args([
            "--kafka-option",
            &format!(
                "security.protocol=SSL,ssl.ca.location={}",
                stranger.dir.join("ca.pem").display()
            ),
        ])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .env_remove("WAYBILL_KAFKA_OPTIONS")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The dispatcher starts (a broker may be unreachable for a while), and its log says why it
    // cannot use this one.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if (text.contains("certificate verify failed") && text.contains("ssl.ca.location"))
            || Instant::now() >= deadline
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = dispatcher.kill();
    let _ = dispatcher.wait();
    assert!(text.contains("certificate verify failed"), "{text}");
    assert!(
        text.contains("ssl.ca.location"),
        "names the setting to fix: {text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_stores_over_verified_tls_and_refuses_a_server_from_another_ca() {
    use waybill_test_kit::postgres_tls::TlsPostgres;

    let pki = TestPki::new();
    let server = TlsPostgres::start(&pki);
    let dir = temp_dir("postgres-tls");
    // verify-full, trusting the CA of `trusted`.
    let verify_full = |trusted: &TestPki| {
        server.url(
            "postgres",
            &format!(
                "sslmode=verify-full&sslrootcert={}",
                trusted.dir.join("ca.pem").display()
            ),
        )
    };
    let verified = verify_full(&pki);
    for command in ["orders", "dispatcher", "status-ingest"] {
        let listen = free_addr();
        let log = dir.join(format!("{command}.log"));
        let mut service = Command::new(env!("CARGO_BIN_EXE_waybill"))
            .args([command, "--listen", &listen.to_string()])
            .args(["--database-url", &verified])
            .args(
                ["--kafka-brokers", "127.0.0.1:9"]
                    .iter()
                    .filter(|_| command == "dispatcher"),
            )
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env_remove("WAYBILL_KAFKA_OPTIONS")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_serving(listen, command, &log).await;
        let _ = service.kill();
        let _ = service.wait();
        let text = std::fs::read_to_string(&log).unwrap();
        // The one start line: where it stores, with TLS verified, and the schema version.
        let start = text
            .lines()
            .find(|line| line.contains("service started"))
            .unwrap_or_else(|| panic!("{command} logged no start line: {text}"));
        assert!(
            start.contains(&format!(
                "localhost:{}/postgres (sslmode verify-full)",
                server.port
            )),
            "{start}"
        );
        assert!(start.contains("schema_version="), "{start}");
        assert!(
            start.contains("tls=\"off\"") || start.contains("tls=off"),
            "{start}"
        );
    }
    // Every session was encrypted: the server refuses any other (hostnossl … reject).
    let url = server.url("postgres", "sslmode=disable");
    let output = waybill(
        &[
            "orders",
            "--listen",
            &free_addr().to_string(),
            "--database-url",
            &url,
        ],
        &dir,
    );
    assert_eq!(output.status.code(), Some(1));

    // A server whose certificate another CA issued: each service refuses to start, saying why.
    let stranger = TestPki::new();
    let unverified = verify_full(&stranger);
    for command in ["orders", "dispatcher", "status-ingest"] {
        let mut args = vec![
            command,
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &unverified,
        ];
        if command == "dispatcher" {
            args.extend(["--kafka-brokers", "127.0.0.1:9"]);
        }
        let output = waybill(&args, &dir);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{command}: {stderr}");
        assert!(
            stderr.contains("cannot connect to the database") && stderr.contains("certificate"),
            "{command}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
