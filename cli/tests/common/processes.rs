//! One `waybill` process of a test: started with its log in a file, killed hard or stopped with
//! SIGTERM, restarted as a supervisor would, its peak memory sampled; and waiting for a
//! listener's health to say SERVING.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// One `waybill` process, restartable, its memory sampled.
pub struct Service {
    pub role: &'static str,
    pub args: Vec<String>,
    pub log: PathBuf,
    child: Option<Child>,
    pub peak_rss_kib: u64,
}

impl Service {
    pub fn start(role: &'static str, args: Vec<String>, logs: &Path) -> Self {
        let mut service = Self {
            role,
            args,
            log: logs.join(format!("{role}.log")),
            child: None,
            peak_rss_kib: 0,
        };
        service.spawn();
        service
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_waybill"))
            .args(&self.args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start waybill");
        self.child = Some(child);
    }

    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(&mut self) -> bool {
        if self.child.is_none() {
            return true;
        }
        let Some((status, _)) = self.terminate_within(Duration::from_secs(30)) else {
            return false;
        };
        if !status.success() {
            eprintln!("{} did not stop cleanly: {status}", self.role);
        }
        status.success()
    }

    /// SIGTERM, then waits at most `bound` for the exit: its status and how long it took, or
    /// `None` if it was still running (then it is killed). Also `None` if it was not running.
    pub fn terminate_within(
        &mut self,
        bound: Duration,
    ) -> Option<(std::process::ExitStatus, Duration)> {
        let mut child = self.child.take()?;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let signalled = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some((status, signalled.elapsed()));
            }
            if signalled.elapsed() > bound {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// If the process died on its own, its exit status (and it is started again, as a
    /// supervisor would).
    pub fn restart_if_exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().unwrap()?;
        self.child = None;
        self.spawn();
        Some(status)
    }

    pub fn sample_rss(&mut self) {
        if let Some(child) = &self.child
            && let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            && let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            self.peak_rss_kib = self.peak_rss_kib.max(kib);
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub async fn wait_serving(addr: SocketAddr, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            if let Ok(reply) = health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                && reply.into_inner().status()
                    == tonic_health::pb::health_check_response::ServingStatus::Serving
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not start; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waybill's three services as processes of their own on one database and broker, each
/// SERVING: Orders (catalog seeded, `orders_extra` flags added), StatusIngest (audience
/// `audience`) and the dispatcher (topics `prefix` + partner id, 3 partitions, StatusIngest
/// as the reply-to, region `eu`, polling every 250 ms). Logs go to `dir`.
pub struct Loop {
    pub orders: Service,
    pub ingest: Service,
    pub dispatcher: Service,
    pub orders_addr: SocketAddr,
    pub ingest_addr: SocketAddr,
    pub dispatcher_addr: SocketAddr,
}

impl Loop {
    pub async fn start(
        database_url: &str,
        brokers: &str,
        prefix: &str,
        audience: &str,
        orders_extra: &[&str],
        dir: &Path,
    ) -> Self {
        let (orders_addr, ingest_addr, dispatcher_addr) = (free_addr(), free_addr(), free_addr());
        let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let mut orders_args = args(&[
            "orders",
            "--listen",
            &orders_addr.to_string(),
            "--database-url",
            database_url,
            "--seed-catalog",
        ]);
        orders_args.extend(args(orders_extra));
        let orders = Service::start("orders", orders_args, dir);
        wait_serving(orders_addr, "orders", &orders.log).await;
        let ingest = Service::start(
            "status-ingest",
            args(&[
                "status-ingest",
                "--listen",
                &ingest_addr.to_string(),
                "--database-url",
                database_url,
                "--audience",
                audience,
            ]),
            dir,
        );
        wait_serving(ingest_addr, "status-ingest", &ingest.log).await;
        let dispatcher = Service::start(
            "dispatcher",
            args(&[
                "dispatcher",
                "--listen",
                &dispatcher_addr.to_string(),
                "--database-url",
                database_url,
                "--kafka-brokers",
                brokers,
                "--topic-prefix",
                prefix,
                "--topic-partitions",
                "3",
                "--reply-to",
                &format!("http://{ingest_addr}"),
                "--region",
                "eu",
                "--poll-interval",
                "250ms",
            ]),
            dir,
        );
        wait_serving(dispatcher_addr, "dispatcher", &dispatcher.log).await;
        Self {
            orders,
            ingest,
            dispatcher,
            orders_addr,
            ingest_addr,
            dispatcher_addr,
        }
    }
}

/// Whether `python3` has the libraries the Python partners use (confluent-kafka, grpcio with
/// its tools, protobuf, PyJWT with cryptography).
pub fn python_libraries() -> bool {
    Command::new("python3")
        .args([
            "-c",
            "import confluent_kafka, grpc, grpc_tools, jwt, google.protobuf, cryptography",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The number in environment variable `name` (a test's shape set from outside), or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
