//! `waybill partner local-express | distance-freight`: one example partner's connector as a
//! process of its own (a deployment's partner container), configured by flags or the
//! environment variables of the connector SDK.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use waybill_connector_sdk::{ConnectorBuilder, examples::ExamplePartner};

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
    /// local-express only: how long after accepting an order it reports it SHIPPED, in
    /// milliseconds.
    #[arg(long, env = "WAYBILL_SHIPPED_AFTER_MS", default_value_t = 2000)]
    shipped_after_ms: u64,
    #[command(flatten)]
    metrics: waybill_service_kit::metrics::MetricsArgs,
}

/// Runs the partner until `shutdown` (ctrl-c or SIGTERM): stops taking orders, finishes or
/// releases those in flight, commits, leaves the group.
pub async fn run(args: PartnerArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let partner = match args.partner {
        Which::LocalExpress => ExamplePartner::LocalExpress,
        Which::DistanceFreight => ExamplePartner::DistanceFreight,
    };
    let path = |p: &PathBuf| p.to_string_lossy().into_owned();
    let lookup = |name: &str| -> Option<String> {
        match name {
            "WAYBILL_PARTNER_ID" => args.partner_id.clone(),
            "WAYBILL_KAFKA_BROKERS" => Some(args.kafka_brokers.clone()),
            "WAYBILL_KAFKA_OPTIONS" => Some(args.kafka_options.join(",")),
            "WAYBILL_TOPIC_PREFIX" => Some(args.topic_prefix.clone()),
            "WAYBILL_CONNECTOR_GROUP" => args.group.clone(),
            "WAYBILL_KAFKA_SESSION_TIMEOUT_MS" => args.session_timeout_ms.map(|v| v.to_string()),
            "WAYBILL_KAFKA_FETCH_WAIT_MS" => args.fetch_wait_ms.map(|v| v.to_string()),
            "WAYBILL_PARTNER_KEY_FILE" => Some(path(&args.key_file)),
            "WAYBILL_PARTNER_KEY_ID" => Some(args.key_id.clone()),
            "WAYBILL_TOKEN_AUDIENCE" => Some(args.audience.clone()),
            "WAYBILL_INBOX" => args.inbox.clone(),
            "WAYBILL_ADAPTER_TIMEOUT_MS" => args.adapter_timeout_ms.map(|v| v.to_string()),
            "WAYBILL_REPORT_TLS_CA" => args.report_tls_ca.as_ref().map(path),
            _ => None,
        }
    };
    let builder = ConnectorBuilder::from_lookup(partner.id(), lookup)?;
    let connector = builder
        .build()
        .await
        .with_context(|| format!("cannot start the {partner} connector"))?;
    // The connector's series (lag, inbox, counters) on --metrics-listen, when set.
    let metrics = waybill_service_kit::metrics::Metrics::new();
    connector.health().register_metrics(&metrics);
    let metrics_server = args
        .metrics
        .start(&metrics, shutdown.clone())
        .await
        .context("cannot serve metrics")?;
    tracing::info!(partner = %connector.partner_id(), brokers = %args.kafka_brokers, "example partner running");
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
