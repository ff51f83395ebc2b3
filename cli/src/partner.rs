//! `waybill partner local-express | distance-freight`: one example partner's connector as a
//! process of its own (a deployment's partner container), configured by flags or the
//! environment variables of the connector SDK. [`ConnectorArgs`] are the connector's flags,
//! shared with `waybill sidecar`.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use waybill_connector_sdk::{
    Connector, ConnectorBuilder, examples::ExamplePartner, metrics::METRICS_PREFIX,
};

/// Which example partner.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Which {
    /// Acknowledges every order at once (tracking id `LX-…`) and reports it SHIPPED later.
    LocalExpress,
    /// Acknowledges each order once with a tracking id (`DF…`).
    DistanceFreight,
}

/// Settings of `waybill partner`. The partner must be enrolled with Waybill (its topic,
/// routes and public key: `DispatchAdmin.EnrollPartner`, `SetRoute`, `AddPartnerKey`).
#[derive(Debug, clap::Args)]
pub struct PartnerArgs {
    /// The example partner to run.
    #[arg(value_enum)]
    partner: Which,
    /// local-express only: how long after accepting an order it reports it SHIPPED, in
    /// milliseconds.
    #[arg(long, env = "WAYBILL_SHIPPED_AFTER_MS", default_value_t = 2000)]
    shipped_after_ms: u64,
    #[command(flatten)]
    connector: ConnectorArgs,
}

/// The task serving `--metrics-listen`, to await once the connector stopped.
pub type MetricsServer = tokio::task::JoinHandle<std::io::Result<()>>;

/// The connector's settings, as flags or the connector SDK's environment variables.
#[derive(Debug, clap::Args)]
pub struct ConnectorArgs {
    /// The partner id it is enrolled under (default: the example's own).
    #[arg(long, env = "WAYBILL_PARTNER_ID")]
    partner_id: Option<String>,
    /// Kafka clusters, `;`-separated; each `host:port[,host:port]` or `name=host:port[,…]`
    /// (one per Waybill region).
    #[arg(long, env = "WAYBILL_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// librdkafka properties for every cluster, `key=value` (repeatable or comma-separated):
    /// this partner's own credentials, e.g. `security.protocol=SASL_SSL`,
    /// `sasl.mechanism=SCRAM-SHA-512`, `sasl.username=…`, `sasl.password=…`,
    /// `ssl.ca.location=ca.pem` (a setting this build cannot honour stops start-up, exit 64).
    #[arg(
        long = "kafka-option",
        env = "WAYBILL_KAFKA_OPTIONS",
        value_delimiter = ','
    )]
    kafka_options: Vec<String>,
    /// The dispatcher's partner-topic prefix: the topic is prefix + partner id.
    #[arg(long, env = "WAYBILL_TOPIC_PREFIX", default_value = "waybill.partner.")]
    topic_prefix: String,
    /// Consumer group id (default `waybill-connector.<partner>`); every instance of one
    /// partner uses the same.
    #[arg(long, env = "WAYBILL_CONNECTOR_GROUP")]
    group: Option<String>,
    /// Group session timeout, in milliseconds (default 10000).
    #[arg(long, env = "WAYBILL_KAFKA_SESSION_TIMEOUT_MS")]
    session_timeout_ms: Option<u64>,
    /// Longest a broker may hold a fetch that found nothing, in milliseconds (default 100).
    /// Apache Kafka answers as soon as a record arrives; brokers that hold every fetch until
    /// the wait runs out (Tansu, `waybill dev`'s embedded one) add it to every order: use 5.
    #[arg(long, env = "WAYBILL_KAFKA_FETCH_WAIT_MS")]
    fetch_wait_ms: Option<u64>,
    /// The partner's Ed25519 private key, PKCS#8 PEM (`waybill keys generate` writes one).
    #[arg(long, env = "WAYBILL_PARTNER_KEY_FILE")]
    key_file: PathBuf,
    /// The key id it was enrolled under (`AddPartnerKey`).
    #[arg(long, env = "WAYBILL_PARTNER_KEY_ID")]
    key_id: String,
    /// The Waybill environment reports are for (StatusIngest's `--audience`).
    #[arg(long, env = "WAYBILL_TOKEN_AUDIENCE", default_value = "waybill-local")]
    audience: String,
    /// The durable inbox: a SQLite file path, `sqlite://PATH` or `postgres://…` (default
    /// `.waybill/<partner>-inbox.db`).
    #[arg(long, env = "WAYBILL_INBOX")]
    inbox: Option<String>,
    /// Longest adapter call, in milliseconds (default 30000).
    #[arg(long, env = "WAYBILL_ADAPTER_TIMEOUT_MS")]
    adapter_timeout_ms: Option<u64>,
    /// PEM CA bundle trusted for `https://` reply-to addresses (StatusIngest with TLS).
    #[arg(long, env = "WAYBILL_REPORT_TLS_CA")]
    report_tls_ca: Option<PathBuf>,
    #[command(flatten)]
    metrics: waybill_service_kit::metrics::MetricsArgs,
}

impl ConnectorArgs {
    /// The connector of `default_partner` (or `--partner-id`), built and serving its series on
    /// `--metrics-listen` when set; the metrics server's task, to await after the connector
    /// stopped.
    pub async fn start(
        &self,
        default_partner: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<(Connector, Option<MetricsServer>)> {
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        let lookup = |name: &str| -> Option<String> {
            match name {
                "WAYBILL_PARTNER_ID" => self.partner_id.clone(),
                "WAYBILL_KAFKA_BROKERS" => Some(self.kafka_brokers.clone()),
                "WAYBILL_KAFKA_OPTIONS" => Some(self.kafka_options.join(",")),
                "WAYBILL_TOPIC_PREFIX" => Some(self.topic_prefix.clone()),
                "WAYBILL_CONNECTOR_GROUP" => self.group.clone(),
                "WAYBILL_KAFKA_SESSION_TIMEOUT_MS" => {
                    self.session_timeout_ms.map(|v| v.to_string())
                }
                "WAYBILL_KAFKA_FETCH_WAIT_MS" => self.fetch_wait_ms.map(|v| v.to_string()),
                "WAYBILL_PARTNER_KEY_FILE" => Some(path(&self.key_file)),
                "WAYBILL_PARTNER_KEY_ID" => Some(self.key_id.clone()),
                "WAYBILL_TOKEN_AUDIENCE" => Some(self.audience.clone()),
                "WAYBILL_INBOX" => self.inbox.clone(),
                "WAYBILL_ADAPTER_TIMEOUT_MS" => self.adapter_timeout_ms.map(|v| v.to_string()),
                "WAYBILL_REPORT_TLS_CA" => self.report_tls_ca.as_ref().map(path),
                _ => None,
            }
        };
        let builder = ConnectorBuilder::from_lookup(default_partner, lookup)?;
        let connector = builder
            .build()
            .await
            .with_context(|| format!("cannot start the {default_partner} connector"))?;
        // The connector's series (lag, inbox, counters) on --metrics-listen, when set.
        let metrics = waybill_service_kit::metrics::Metrics::new();
        metrics.register(METRICS_PREFIX, |registry| {
            let inbox = connector.health().register_metrics(registry);
            metrics.on_scrape(move || inbox.refresh());
        });
        let metrics_server = self
            .metrics
            .start(&metrics, shutdown.clone())
            .await
            .context("cannot serve metrics")?;
        tracing::info!(partner = %connector.partner_id(), brokers = %self.kafka_brokers, "connector running");
        Ok((connector, metrics_server))
    }

    /// The partner id given (`--partner-id` or `WAYBILL_PARTNER_ID`).
    pub fn partner_id(&self) -> Option<&str> {
        self.partner_id.as_deref()
    }
}

/// Runs the partner until `shutdown` (ctrl-c or SIGTERM): stops taking orders, finishes or
/// releases those in flight, commits, leaves the group.
pub async fn run(args: PartnerArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let partner = match args.partner {
        Which::LocalExpress => ExamplePartner::LocalExpress,
        Which::DistanceFreight => ExamplePartner::DistanceFreight,
    };
    let (connector, metrics_server) = args.connector.start(partner.id(), &shutdown).await?;
    partner
        .run(
            connector,
            Duration::from_millis(args.shipped_after_ms),
            shutdown,
        )
        .await?;
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    Ok(())
}
