//! Configuration: [`ConnectorBuilder`] from code, or [`ConnectorBuilder::from_env`] for
//! programs configured by environment variables (the example partners).
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `WAYBILL_PARTNER_ID` | the program's own | this partner's id, as enrolled |
//! | `WAYBILL_KAFKA_BROKERS` | `127.0.0.1:9092` | clusters, `;`-separated; each `host:port[,host:port]` or `name=host:port[,…]` |
//! | `WAYBILL_TOPIC_PREFIX` | `waybill.partner.` | the dispatcher's partner-topic prefix: the topic is prefix + partner id |
//! | `WAYBILL_CONNECTOR_GROUP` | `waybill-connector.<partner>` | consumer group id |
//! | `WAYBILL_KAFKA_OPTIONS` | unset | librdkafka properties for every cluster, `,`-separated `key=value` (SASL credentials, TLS) |
//! | `WAYBILL_KAFKA_SESSION_TIMEOUT_MS` | `10000` | group session timeout (6000 suits Tansu) |
//! | `WAYBILL_KAFKA_FETCH_WAIT_MS` | `100` | longest a broker holds an empty fetch (5 suits Tansu) |
//! | `WAYBILL_PARTNER_KEY_FILE` | required | the partner's Ed25519 private key, PKCS#8 PEM |
//! | `WAYBILL_PARTNER_KEY_ID` | required | the key id it was enrolled under |
//! | `WAYBILL_TOKEN_AUDIENCE` | `waybill-local` | the Waybill environment (StatusIngest's `--audience`) |
//! | `WAYBILL_INBOX` | `.waybill/<partner>-inbox.db` | SQLite file path, `sqlite://PATH` or `postgres://…` |
//! | `WAYBILL_ADAPTER_TIMEOUT_MS` | `30000` | longest adapter call |
//! | `WAYBILL_REPORT_TLS_CA` | unset | PEM CA bundle trusted for `https://` reply-to addresses |

use std::{path::PathBuf, sync::Arc, time::Duration};

use crate::{
    clock::{SharedClock, SystemClock},
    domain::backoff::Backoff,
    error::{ConfigError, ConnectorError},
    inbox::Inbox,
    observe::{Observer, PipelineObserver},
    signing::ReportSigningKey,
};

/// The default partner-topic prefix (the dispatcher's default).
pub const DEFAULT_TOPIC_PREFIX: &str = "waybill.partner.";

/// One Waybill region's Kafka cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub(crate) name: String,
    pub(crate) bootstrap_servers: String,
    pub(crate) topic: Option<String>,
    pub(crate) topic_prefix: String,
    pub(crate) group_id: Option<String>,
    pub(crate) dead_letter_topic: Option<String>,
    pub(crate) session_timeout: Duration,
    pub(crate) fetch_wait: Duration,
    pub(crate) properties: Vec<(String, String)>,
}

/// How long a broker may hold a fetch that found nothing, by default.
pub const DEFAULT_FETCH_WAIT: Duration = Duration::from_millis(100);

impl ClusterConfig {
    /// A cluster reachable at `bootstrap_servers` (`host:port[,host:port]`), named `name` in
    /// logs, health and the inbox.
    pub fn new(name: impl Into<String>, bootstrap_servers: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            bootstrap_servers: bootstrap_servers.into(),
            topic: None,
            topic_prefix: DEFAULT_TOPIC_PREFIX.to_owned(),
            group_id: None,
            dead_letter_topic: None,
            session_timeout: Duration::from_secs(10),
            fetch_wait: DEFAULT_FETCH_WAIT,
            properties: Vec::new(),
        }
    }

    /// The dispatcher's partner-topic prefix in this region (default `waybill.partner.`).
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = prefix.into();
        self
    }

    /// The topic itself, overriding prefix + partner id.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// The consumer group (default `waybill-connector.<partner>`): every instance of this
    /// partner's connector on this cluster must use the same one.
    pub fn group_id(mut self, group: impl Into<String>) -> Self {
        self.group_id = Some(group.into());
        self
    }

    /// The dead-letter topic (default: the partner topic + `.dead-letter`).
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// The group session timeout: how long before a killed instance's partitions move.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// How long the broker may hold a fetch that found nothing (`fetch.wait.max.ms`, default
    /// 100 ms; a `fetch.wait.max.ms` property overrides it). Apache Kafka answers a waiting
    /// fetch as soon as a record arrives, so there this only bounds the idle fetch rate; brokers
    /// that hold every fetch until the wait runs out (Tansu, librdkafka's mock cluster that
    /// `waybill dev` embeds) add it to every order's latency: `waybill dev`, the demo and the
    /// benches use 5 ms.
    pub fn fetch_wait(mut self, wait: Duration) -> Self {
        self.fetch_wait = wait;
        self
    }

    /// Any other librdkafka property (TLS, SASL, …), applied to the consumer and the
    /// dead-letter producer.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((key.into(), value.into()));
        self
    }

    /// The settings every client of this cluster starts from: the brokers, a client id and
    /// the extra properties.
    pub(crate) fn client_config(&self, partner_id: &str) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        config.set("client.id", format!("waybill-connector.{partner_id}"));
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    pub(crate) fn topic_for(&self, partner_id: &str) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| format!("{}{partner_id}", self.topic_prefix))
    }
}

/// Where the inbox lives.
#[derive(Debug, Clone)]
pub(crate) enum InboxChoice {
    Default,
    Url(String),
    Ready(Arc<dyn Inbox>),
}

/// Builds a [`Connector`](crate::connector::Connector).
#[derive(Debug, Clone)]
pub struct ConnectorBuilder {
    pub(crate) partner_id: String,
    pub(crate) clusters: Vec<ClusterConfig>,
    pub(crate) signing_key: Option<ReportSigningKey>,
    pub(crate) audience: String,
    pub(crate) inbox: InboxChoice,
    pub(crate) adapter_timeout: Duration,
    pub(crate) adapter_attempts: u32,
    pub(crate) adapter_backoff: Backoff,
    pub(crate) report_backoff: Backoff,
    pub(crate) report_attempts: u32,
    pub(crate) report_timeout: Duration,
    pub(crate) max_in_flight_per_partition: usize,
    pub(crate) revoke_bound: Duration,
    pub(crate) shutdown_grace: Duration,
    pub(crate) commit_interval: Duration,
    pub(crate) retention: Duration,
    pub(crate) stats_interval: Duration,
    pub(crate) report_tls: Option<tonic::transport::ClientTlsConfig>,
    pub(crate) observer: Observer,
    pub(crate) clock: SharedClock,
}

impl ConnectorBuilder {
    pub(crate) fn new(partner_id: impl Into<String>) -> Self {
        Self {
            partner_id: partner_id.into(),
            clusters: Vec::new(),
            signing_key: None,
            audience: "waybill-local".to_owned(),
            inbox: InboxChoice::Default,
            adapter_timeout: Duration::from_secs(30),
            adapter_attempts: 8,
            adapter_backoff: Backoff {
                base: Duration::from_millis(500),
                cap: Duration::from_secs(60),
            },
            report_backoff: Backoff {
                base: Duration::from_millis(500),
                cap: Duration::from_secs(60),
            },
            report_attempts: 200,
            report_timeout: Duration::from_secs(10),
            max_in_flight_per_partition: 512,
            revoke_bound: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(15),
            commit_interval: Duration::from_millis(500),
            retention: Duration::from_secs(7 * 24 * 3600),
            stats_interval: Duration::from_secs(60),
            report_tls: None,
            observer: Observer::default(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Configuration from the environment variables in this module's table; `default_partner`
    /// when `WAYBILL_PARTNER_ID` is unset.
    pub fn from_env(default_partner: &str) -> Result<Self, ConnectorError> {
        Self::from_lookup(default_partner, |name| std::env::var(name).ok())
    }

    /// [`ConnectorBuilder::from_env`] over any source of variables (a config file's map, a
    /// test's).
    pub fn from_lookup(
        default_partner: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConnectorError> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let millis = |name: &'static str| -> Result<Option<Duration>, ConfigError> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map(Duration::from_millis)
                        .map_err(|_| ConfigError::NotMilliseconds {
                            variable: name,
                            value: v.clone(),
                        })
                })
                .transpose()
        };
        let partner = var("WAYBILL_PARTNER_ID").unwrap_or_else(|| default_partner.to_owned());
        let mut builder = Self::new(partner.clone());
        let prefix = var("WAYBILL_TOPIC_PREFIX").unwrap_or_else(|| DEFAULT_TOPIC_PREFIX.to_owned());
        let session = millis("WAYBILL_KAFKA_SESSION_TIMEOUT_MS")?;
        let fetch_wait = millis("WAYBILL_KAFKA_FETCH_WAIT_MS")?;
        let group = var("WAYBILL_CONNECTOR_GROUP");
        let brokers = var("WAYBILL_KAFKA_BROKERS").unwrap_or_else(|| "127.0.0.1:9092".to_owned());
        let properties = var("WAYBILL_KAFKA_OPTIONS")
            .map(|options| {
                options
                    .split(',')
                    .map(str::trim)
                    .filter(|entry| !entry.is_empty())
                    .map(|entry| {
                        entry
                            .split_once('=')
                            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                            .ok_or_else(|| ConfigError::KafkaOption {
                                entry: entry.to_owned(),
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        for (index, spec) in brokers
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            let (name, servers) = match spec.split_once('=') {
                Some((name, servers)) => (name.trim().to_owned(), servers.trim()),
                None => (format!("cluster-{}", index + 1), spec),
            };
            let mut cluster = ClusterConfig::new(name, servers).topic_prefix(prefix.clone());
            if let Some(session) = session {
                cluster = cluster.session_timeout(session);
            }
            if let Some(group) = &group {
                cluster = cluster.group_id(group.clone());
            }
            if let Some(wait) = fetch_wait {
                cluster = cluster.fetch_wait(wait);
            }
            for (key, value) in &properties {
                cluster = cluster.property(key.clone(), value.clone());
            }
            builder = builder.cluster(cluster);
        }
        match (
            var("WAYBILL_PARTNER_KEY_FILE"),
            var("WAYBILL_PARTNER_KEY_ID"),
        ) {
            (Some(file), Some(kid)) => {
                builder = builder.signing_key(
                    ReportSigningKey::from_pem_file(&file, kid).map_err(ConfigError::from)?,
                );
            }
            (None, None) => return Err(ConfigError::NoKeyVariables.into()),
            _ => return Err(ConfigError::HalfKeyVariables.into()),
        }
        if let Some(audience) = var("WAYBILL_TOKEN_AUDIENCE") {
            builder = builder.audience(audience);
        }
        if let Some(inbox) = var("WAYBILL_INBOX") {
            builder = builder.inbox_url(inbox);
        }
        if let Some(timeout) = millis("WAYBILL_ADAPTER_TIMEOUT_MS")? {
            builder = builder.adapter_timeout(timeout);
        }
        if let Some(path) = var("WAYBILL_REPORT_TLS_CA") {
            let pem = std::fs::read(&path).map_err(|e| ConfigError::File {
                variable: "WAYBILL_REPORT_TLS_CA",
                path: path.clone(),
                reason: e.to_string(),
            })?;
            builder = builder.report_tls_ca(pem);
        }
        Ok(builder)
    }

    /// Adds a cluster to consume (one per Waybill region).
    pub fn cluster(mut self, cluster: ClusterConfig) -> Self {
        self.clusters.push(cluster);
        self
    }

    /// The key reports are signed with (required).
    pub fn signing_key(mut self, key: ReportSigningKey) -> Self {
        self.signing_key = Some(key);
        self
    }

    /// The Waybill environment the reports are for: StatusIngest's `--audience`
    /// (default `waybill-local`).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self
    }

    /// The SQLite inbox file (default `.waybill/<partner>-inbox.db`).
    pub fn inbox_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.inbox = InboxChoice::Url(path.into().to_string_lossy().into_owned());
        self
    }

    /// The inbox by URL: a SQLite path, `sqlite://PATH` or `postgres://…` (instances that share
    /// partitions should share a Postgres inbox).
    pub fn inbox_url(mut self, url: impl Into<String>) -> Self {
        self.inbox = InboxChoice::Url(url.into());
        self
    }

    /// An inbox already open (any [`Inbox`] implementation).
    pub fn inbox(mut self, inbox: Arc<dyn Inbox>) -> Self {
        self.inbox = InboxChoice::Ready(inbox);
        self
    }

    /// The longest an adapter call may take before it is abandoned and retried (default 30 s).
    pub fn adapter_timeout(mut self, timeout: Duration) -> Self {
        self.adapter_timeout = timeout;
        self
    }

    /// Adapter calls per order before it is set aside (default 8), and the backoff between
    /// them (default 0.5 s doubling to 60 s, full jitter).
    pub fn adapter_retries(mut self, attempts: u32, base: Duration, cap: Duration) -> Self {
        self.adapter_attempts = attempts.max(1);
        self.adapter_backoff = Backoff { base, cap };
        self
    }

    /// Report attempts before a report is kept as refused (default 200), and the backoff
    /// between them (default 0.5 s doubling to 60 s, full jitter).
    pub fn report_retries(mut self, attempts: u32, base: Duration, cap: Duration) -> Self {
        self.report_attempts = attempts.max(1);
        self.report_backoff = Backoff { base, cap };
        self
    }

    /// Records in flight per partition before it is paused (default 512).
    pub fn max_in_flight_per_partition(mut self, max: usize) -> Self {
        self.max_in_flight_per_partition = max.max(1);
        self
    }

    /// How long a revoked partition's in-flight orders may take to finish before they are
    /// abandoned to the next owner (default 10 s).
    pub fn revoke_bound(mut self, bound: Duration) -> Self {
        self.revoke_bound = bound;
        self
    }

    /// How long shutdown waits for in-flight orders and due reports (default 15 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// How often safe offsets are committed (default 0.5 s).
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// How long settled inbox rows are kept (default 7 days; keep it above the partner's
    /// handover deadline × resend budget, so a late resend is still recognised).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How often the counters are logged (default 60 s).
    pub fn stats_interval(mut self, interval: Duration) -> Self {
        self.stats_interval = interval;
        self
    }

    /// Trusts the CA certificates in `ca_pem` (PEM) for reports to `https://` reply-to
    /// addresses. Without it an `https://` reply-to is refused with a clear reason (this
    /// library does not read the system's trust store).
    pub fn report_tls_ca(mut self, ca_pem: impl AsRef<[u8]>) -> Self {
        let config = self.report_tls.take().unwrap_or_default();
        self.report_tls =
            Some(config.ca_certificate(tonic::transport::Certificate::from_pem(ca_pem)));
        self
    }

    /// Presents this client certificate and key (PEM) to StatusIngest (mTLS).
    pub fn report_tls_identity(
        mut self,
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Self {
        let config = self.report_tls.take().unwrap_or_default();
        self.report_tls =
            Some(config.identity(tonic::transport::Identity::from_pem(cert_pem, key_pem)));
        self
    }

    /// Tells `observer` of every order's steps through the connector (latency figures).
    pub fn observer(mut self, observer: Arc<dyn PipelineObserver>) -> Self {
        self.observer = Observer::new(Some(observer));
        self
    }

    /// Where the connector reads the time (default: the [`SystemClock`]): the due times of
    /// reports and their retries, each report token's issue time, the inbox's time stamps and
    /// retention, the placed → answered latency. A test sets a
    /// [`ManualClock`](crate::clock::ManualClock) and moves it. An inbox given ready with
    /// [`ConnectorBuilder::inbox`] keeps its own clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }
}

#[cfg(test)]
mod tests;
