//! The whole system in one process, as `waybill dev`, `waybill demo` and `waybill bench e2e`
//! run it: the services' [`Stack`] (Orders, the dispatcher, StatusIngest on one database, the
//! embedded Kafka-protocol broker or a given cluster; the assembly the integration tests'
//! `TestStack` starts too), and the two example partners' connectors, enrolled with their
//! routes and keys through `DispatchAdmin` as an operator would.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use waybill_connector_sdk::{
    Acceptance, ClusterConfig, Connector, PartnerError, PipelineObserver, ReportSigningKey,
    ShipmentContext, TransportPartner,
    examples::{DistanceFreight, ExamplePartner, LocalExpress},
    metrics::{ConnectorHealth, METRICS_PREFIX, register_metrics},
    proto::DispatchedOrder,
};
use waybill_dispatcher::{RelaySettings, kafka::KafkaSettings};
use waybill_proto::v1::{self as pb, dispatch_admin_client::DispatchAdminClient};
use waybill_service_kit::{db::Database, metrics::Metrics, security::ServerSecurity};
use waybill_stack::{
    Broker, DispatcherSettings, IngestSettings, Stack, StackMetrics, StackSettings,
};
use waybill_token::{SigningKey, keys};

/// The routes of the example partners: `(partner, country, priority)`. Lower priority wins;
/// `distance-freight` also serves the US behind `local-express`, so an order `local-express`
/// rejects there is re-routed to it.
pub const ROUTES: &[(ExamplePartner, &str, i32)] = &[
    (ExamplePartner::LocalExpress, "US", 100),
    (ExamplePartner::DistanceFreight, "US", 200),
    (ExamplePartner::DistanceFreight, "CA", 100),
    (ExamplePartner::DistanceFreight, "MX", 100),
    (ExamplePartner::DistanceFreight, "GB", 100),
    (ExamplePartner::DistanceFreight, "DE", 100),
    (ExamplePartner::DistanceFreight, "FR", 100),
    (ExamplePartner::DistanceFreight, "NL", 100),
    (ExamplePartner::DistanceFreight, "JP", 100),
    (ExamplePartner::DistanceFreight, "AU", 100),
];

/// What `waybill bench e2e` watches the loop with, and the one fault it injects to prove its
/// ledger; `dev` and `demo` leave it empty (nothing is called then).
#[derive(Clone, Default)]
pub struct Observe {
    /// Told of each order's steps through the partners' connectors.
    pub connector: Option<Arc<dyn PipelineObserver>>,
    /// Told of each order's steps through the relay.
    pub relay: waybill_dispatcher::relay::Observer,
    /// A fault for the ledger's test, never set otherwise: the example adapters fail the
    /// `n`-th order they are called with (counting from 1) permanently, so its connector sets
    /// it aside and it leaves the loop unanswered.
    pub lose_nth_order: Option<u64>,
}

/// How to run the system.
#[derive(Clone)]
pub struct SystemSettings {
    /// Where Orders listens.
    pub orders_listen: SocketAddr,
    /// Where the dispatcher's admin API listens.
    pub dispatcher_listen: SocketAddr,
    /// Where StatusIngest listens.
    pub status_ingest_listen: SocketAddr,
    /// The audience report tokens carry.
    pub audience: String,
    /// Storage.
    pub database_url: String,
    /// A real Kafka cluster instead of the embedded broker.
    pub kafka_brokers: Option<String>,
    /// This region's name.
    pub region: String,
    /// Where the example partners keep their keys (`keys/`) and inboxes.
    pub data_dir: PathBuf,
    /// Keep the partners' keys in `data_dir` (and reuse them on the next run) instead of
    /// generating fresh ones for this run only.
    pub keep_keys: bool,
    /// How long after accepting `local-express` reports an order shipped.
    pub shipped_after: Duration,
    /// The dispatcher's audit thresholds.
    pub audit: waybill_dispatcher::domain::audit::AuditThresholds,
    /// The example partners' handover deadline.
    pub handover_deadline: Duration,
    /// Observers and the ledger's fault (`waybill bench e2e`).
    pub observe: Observe,
}

/// A running system; [`System::wait`] stops it in order once its shutdown token is cancelled.
pub struct System {
    /// Orders' address.
    pub orders_addr: SocketAddr,
    /// The admin API's address.
    pub dispatcher_addr: SocketAddr,
    /// StatusIngest's address.
    pub ingest_addr: SocketAddr,
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// The example partners' connectors (their health and counters).
    pub partners: Vec<(ExamplePartner, ConnectorHealth)>,
    /// The key id each partner signs with.
    pub key_ids: Vec<(ExamplePartner, String)>,
    /// Every service's and partner's Prometheus series, in one registry (`waybill dev` serves
    /// it on `--metrics-listen`).
    pub metrics: Metrics,
    stack: Stack,
    shutdown: CancellationToken,
    partners_stop: CancellationToken,
    connectors: Vec<(ExamplePartner, JoinHandle<anyhow::Result<()>>)>,
}

impl System {
    /// Starts the services' stack (binds, connects, migrates, seeds the catalog, starts every
    /// service), enrols the example partners (idempotently) and starts their connectors.
    /// Everything stops once `shutdown` is cancelled and [`System::wait`] is awaited: the
    /// partners first (so no report is cut off), then the services.
    pub async fn start(
        settings: SystemSettings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        let broker = match &settings.kafka_brokers {
            Some(brokers) => Broker::Kafka {
                settings: KafkaSettings::new(brokers.clone()),
                topic_creator: None,
            },
            None => Broker::Embedded,
        };
        let stack = Stack::start(StackSettings {
            database_url: settings.database_url.clone(),
            seed_catalog: true,
            region: settings.region.clone(),
            orders_listen: settings.orders_listen,
            dispatcher: Some(DispatcherSettings {
                listen: settings.dispatcher_listen,
                broker,
                relay: RelaySettings {
                    audit: settings.audit.clone(),
                    observer: settings.observe.relay.clone(),
                    ..RelaySettings::default()
                },
            }),
            status_ingest: Some(IngestSettings::new(
                settings.status_ingest_listen,
                settings.audience.clone(),
            )),
            metrics: StackMetrics::shared(&metrics),
            security: ServerSecurity::default(),
        })
        .await?;
        let (Some(dispatcher_addr), Some(ingest_addr), Some(brokers)) = (
            stack.dispatcher_addr,
            stack.ingest_addr(),
            stack.brokers.clone(),
        ) else {
            anyhow::bail!("the stack started without its dispatcher or StatusIngest");
        };
        let mut system = Self {
            orders_addr: stack.orders_addr,
            dispatcher_addr,
            ingest_addr,
            brokers,
            partners: Vec::new(),
            key_ids: Vec::new(),
            metrics,
            stack,
            shutdown,
            partners_stop: CancellationToken::new(),
            connectors: Vec::new(),
        };
        if let Err(error) = system.start_partners(&settings).await {
            system.shutdown.cancel();
            let _ = system.wait().await;
            return Err(error);
        }
        Ok(system)
    }

    /// Enrols the partners, their routes and keys, and starts their connectors.
    async fn start_partners(&mut self, settings: &SystemSettings) -> anyhow::Result<()> {
        let mut admin = DispatchAdminClient::connect(format!("http://{}", self.dispatcher_addr))
            .await
            .context("cannot reach the dispatcher admin API")?;
        let keys_dir = settings.data_dir.join("keys");
        // The adapter calls the ledger's fault counts, over both partners.
        let calls = Arc::new(AtomicU64::new(0));
        for partner in ExamplePartner::ALL {
            let key = if settings.keep_keys {
                kept_key(&keys_dir, partner)?
            } else {
                fresh_key(partner)?
            };
            enroll(&mut admin, partner, &key, Some(settings.handover_deadline)).await?;
            let mut builder = Connector::builder(partner.id())
                .cluster(
                    ClusterConfig::new("local", self.brokers.clone())
                        .session_timeout(Duration::from_secs(6))
                        // The embedded broker and Tansu hold a fetch until its wait runs out.
                        .fetch_wait(Duration::from_millis(5)),
                )
                .signing_key(key.clone())
                .audience(settings.audience.clone())
                .inbox_path(settings.data_dir.join(format!("{}-inbox.db", partner.id())))
                .adapter_timeout(Duration::from_secs(5))
                .adapter_retries(8, Duration::from_millis(100), Duration::from_secs(5))
                .report_retries(200, Duration::from_millis(100), Duration::from_secs(5))
                .commit_interval(Duration::from_millis(200))
                .shutdown_grace(Duration::from_secs(5))
                .revoke_bound(Duration::from_secs(5));
            if let Some(observer) = &settings.observe.connector {
                builder = builder.observer(observer.clone());
            }
            let connector = builder
                .build()
                .await
                .with_context(|| format!("cannot start the {partner} connector"))?;
            self.partners.push((partner, connector.health()));
            self.key_ids.push((partner, key.key_id().to_owned()));
            let stop = self.partners_stop.clone();
            let fault = settings.observe.lose_nth_order.map(|nth| LoseNth {
                nth,
                calls: calls.clone(),
            });
            let task = match partner {
                ExamplePartner::LocalExpress => {
                    let adapter = LocalExpress::new().shipped_after(settings.shipped_after);
                    tokio::spawn(run_partner(connector, adapter, fault, stop))
                }
                ExamplePartner::DistanceFreight => {
                    tokio::spawn(run_partner(connector, DistanceFreight, fault, stop))
                }
            };
            self.connectors.push((partner, task));
        }
        let connectors: Vec<ConnectorHealth> = self
            .partners
            .iter()
            .map(|(_, health)| health.clone())
            .collect();
        self.metrics.register(METRICS_PREFIX, |registry| {
            let inbox = register_metrics(registry, &connectors);
            self.metrics.on_scrape(move || inbox.refresh());
        });
        Ok(())
    }

    /// Waits until every partner's connector has joined its consumer group and been given
    /// partitions (the broker delays a new group's first assignment by a few seconds), so that
    /// what is placed next is timed without that one-off wait.
    pub async fn partners_ready(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let waiting: Vec<&str> = self
                .partners
                .iter()
                .filter(|(_, health)| {
                    health
                        .clusters()
                        .iter()
                        .any(|cluster| cluster.partitions.is_empty())
                })
                .map(|(partner, _)| partner.id())
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "the {} connector had no partitions assigned within {} s",
                    waiting.join(" and "),
                    within.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Where `partner`'s key file is (when keys are kept).
    pub fn key_file(data_dir: &Path, partner: ExamplePartner) -> PathBuf {
        data_dir.join("keys").join(format!("{}.pem", partner.id()))
    }

    /// Waits for the shutdown token, then stops the partners, then the services, and closes
    /// the database and the broker. The first failure of any part is returned.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        // A part that fails on its own stops everything (a lost port, a broken database).
        let mut first_error = tokio::select! {
            () = self.shutdown.cancelled() => None,
            failure = self.stack.failure() => Some(anyhow::Error::from(failure)),
        };
        self.partners_stop.cancel();
        for (partner, task) in self.connectors.drain(..) {
            if let Err(error) = flatten(partner.id(), task.await) {
                first_error.get_or_insert(error);
            }
        }
        if let Err(error) = self.stack.stop().await {
            first_error.get_or_insert(error.into());
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The database every service uses.
    pub fn database(&self) -> &Database {
        self.stack.database()
    }

    /// Whether the broker is the embedded one.
    pub fn embedded(&self) -> bool {
        self.stack.embedded()
    }
}

/// Runs `adapter` on `connector`, through the ledger's fault when one is set.
async fn run_partner<P: TransportPartner>(
    connector: Connector,
    adapter: P,
    fault: Option<LoseNth>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    match fault {
        Some(fault) => connector.run(Faulty { adapter, fault }, stop).await?,
        None => connector.run(adapter, stop).await?,
    }
    Ok(())
}

/// The ledger's fault ([`Observe::lose_nth_order`]): which call to fail, and the calls so far.
struct LoseNth {
    nth: u64,
    calls: Arc<AtomicU64>,
}

/// An adapter that fails one order permanently (the ledger's fault) and hands the rest on.
struct Faulty<P> {
    adapter: P,
    fault: LoseNth,
}

impl<P: TransportPartner> TransportPartner for Faulty<P> {
    async fn request_shipment(
        &self,
        order: &DispatchedOrder,
        ctx: &ShipmentContext,
    ) -> Result<Acceptance, PartnerError> {
        if self.fault.calls.fetch_add(1, Ordering::Relaxed) + 1 == self.fault.nth {
            return Err(PartnerError::permanent(
                "lost on purpose: the bench's ledger fault (--lose-order)",
            ));
        }
        self.adapter.request_shipment(order, ctx).await
    }
}

fn flatten(
    name: &str,
    result: Result<anyhow::Result<()>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    result
        .with_context(|| format!("{name} task"))?
        .with_context(|| format!("{name} failed"))
}

/// A key for this run only.
fn fresh_key(partner: ExamplePartner) -> anyhow::Result<ReportSigningKey> {
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    with_key_id(key, partner)
}

/// The key kept in `dir` (generated and written there, readable by its owner only, on first
/// use).
pub(crate) fn kept_key(dir: &Path, partner: ExamplePartner) -> anyhow::Result<ReportSigningKey> {
    let path = dir.join(format!("{}.pem", partner.id()));
    let key = match std::fs::read(&path) {
        Ok(bytes) => keys::signing_key_from_pkcs8(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
            crate::token::write_new(&path, keys::signing_key_to_pem(&key)?.as_bytes(), true)?;
            key
        }
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", path.display()));
        }
    };
    with_key_id(key, partner)
}

/// The key id names the key (`<partner>-<first bytes of the public key>`), so a replaced key
/// file is enrolled as a new key rather than clashing with the old one's id.
fn with_key_id(key: SigningKey, partner: ExamplePartner) -> anyhow::Result<ReportSigningKey> {
    let fingerprint: String = key.verifying_key().to_bytes()[..4]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    ReportSigningKey::from_key(key, format!("{}-{fingerprint}", partner.id()))
        .map_err(anyhow::Error::from)
}

/// Enrols `partner` (creating its topic) with `handover_deadline` (`None`: the dispatcher's
/// default), its routes and its key through the admin API. Idempotent: enrolling again updates, a key already enrolled is fine.
pub(crate) async fn enroll(
    admin: &mut DispatchAdminClient<tonic::transport::Channel>,
    partner: ExamplePartner,
    key: &ReportSigningKey,
    handover_deadline: Option<Duration>,
) -> anyhow::Result<()> {
    let id = partner.id();
    admin
        .enroll_partner(pb::EnrollPartnerRequest {
            partner: Some(pb::Partner {
                id: id.to_owned(),
                display_name: partner.display_name().to_owned(),
                enabled: true,
                handover_deadline: handover_deadline.map(|d| prost_types::Duration {
                    seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                    nanos: 0,
                }),
                resend_budget: Some(3),
                ..Default::default()
            }),
        })
        .await
        .with_context(|| format!("cannot enroll partner {id}"))?;
    for (_, country, priority) in ROUTES.iter().filter(|(p, _, _)| *p == partner) {
        admin
            .set_route(pb::SetRouteRequest {
                route: Some(pb::Route {
                    id: format!("{id}-{}", country.to_ascii_lowercase()),
                    partner_id: id.to_owned(),
                    country_code: (*country).to_owned(),
                    priority: *priority,
                    enabled: true,
                    ..Default::default()
                }),
                dry_run: false,
            })
            .await
            .with_context(|| format!("cannot route {country} to {id}"))?;
    }
    match admin
        .add_partner_key(pb::AddPartnerKeyRequest {
            partner_id: id.to_owned(),
            key_id: key.key_id().to_owned(),
            public_key: key.public_key().to_vec(),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(status) => Err(anyhow::anyhow!(
            "cannot enrol {id}'s key {}: {}",
            key.key_id(),
            status.message()
        )),
    }
}
