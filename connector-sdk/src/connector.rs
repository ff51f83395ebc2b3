//! [`Connector`]: the running SDK — one poll thread per cluster, the adapter's calls on the
//! async runtime, the report sender, retention and stats.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rdkafka::{producer::FutureProducer, producer::Producer as _};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use waybill_kafka_client::{
    log::{ClientLog, LogContext},
    settings::check_client_config,
};

pub use crate::error::ConnectorError;
use crate::{
    clock::SharedClock,
    config::{ConnectorBuilder, InboxChoice},
    consumer::{PollContext, PollSettings, create_consumer, poll_loop},
    delivery::{ReportSender, SenderSettings},
    domain::{order::AdapterRetry, report::ReportRetry},
    error::ConfigError,
    inbox::{Inbox, SqlInbox},
    metrics::{ClusterHealth, ConnectorHealth, ConnectorMetrics},
    partner::TransportPartner,
    signing::ReportSigningKey,
    status::StatusReporter,
    worker::{ClusterSink, Worker, WorkerSettings},
};

impl ConnectorBuilder {
    /// Checks the settings and opens the inbox.
    pub async fn build(self) -> Result<Connector, ConnectorError> {
        let partner = self.partner_id.trim();
        if partner.is_empty()
            || !partner
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(ConfigError::PartnerId(self.partner_id.clone()).into());
        }
        if self.clusters.is_empty() {
            return Err(ConfigError::NoCluster.into());
        }
        let mut names: Vec<&str> = self.clusters.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        if names.len() != self.clusters.len() {
            return Err(ConfigError::DuplicateCluster.into());
        }
        // A Kafka setting this build cannot honour stops here, before the inbox is opened or
        // anything listens.
        for cluster in &self.clusters {
            check_client_config(&cluster.client_config(partner)).map_err(|refused| {
                ConfigError::KafkaSettings {
                    cluster: cluster.name.clone(),
                    refused,
                }
            })?;
        }
        let Some(key) = self.signing_key.clone() else {
            return Err(ConfigError::NoSigningKey.into());
        };
        let clock = Arc::clone(&self.clock);
        let inbox: Arc<dyn Inbox> = match &self.inbox {
            InboxChoice::Ready(inbox) => Arc::clone(inbox),
            InboxChoice::Url(url) => Arc::new(SqlInbox::open(url).await?.with_clock(clock)),
            InboxChoice::Default => Arc::new(
                SqlInbox::open_sqlite(format!(".waybill/{partner}-inbox.db"))
                    .await?
                    .with_clock(clock),
            ),
        };
        Ok(Connector::new(self, key, inbox))
    }
}

/// A partner's connector: configured by [`Connector::builder`], started by [`Connector::run`].
#[derive(Debug)]
pub struct Connector {
    settings: ConnectorBuilder,
    key: ReportSigningKey,
    inbox: Arc<dyn Inbox>,
    wake: Arc<Notify>,
    health: ConnectorHealth,
}

impl Connector {
    /// A builder for partner `partner_id` (as enrolled with Waybill).
    pub fn builder(partner_id: impl Into<String>) -> ConnectorBuilder {
        ConnectorBuilder::new(partner_id)
    }

    pub(crate) fn new(
        settings: ConnectorBuilder,
        key: ReportSigningKey,
        inbox: Arc<dyn Inbox>,
    ) -> Self {
        let clusters = settings
            .clusters
            .iter()
            .map(|cluster| ClusterHealth {
                name: cluster.name.clone(),
                ..ClusterHealth::default()
            })
            .collect();
        let health = ConnectorHealth {
            partner_id: settings.partner_id.clone(),
            metrics: Arc::new(ConnectorMetrics::default()),
            clusters: Arc::new(Mutex::new(clusters)),
            running: Arc::new(AtomicBool::new(false)),
            inbox: Arc::clone(&inbox),
        };
        Self {
            settings,
            key,
            inbox,
            wake: Arc::new(Notify::new()),
            health,
        }
    }

    /// The partner id.
    pub fn partner_id(&self) -> &str {
        &self.settings.partner_id
    }

    /// A handle for reporting later statuses (`SHIPPED`, `DELIVERED`, `EXCEPTION`); hand it to
    /// the adapter before [`Connector::run`].
    pub fn reporter(&self) -> StatusReporter {
        StatusReporter {
            partner_id: self.settings.partner_id.clone(),
            inbox: Arc::clone(&self.inbox),
            wake: Arc::clone(&self.wake),
            clock: Arc::clone(&self.settings.clock),
        }
    }

    /// Health and metrics hooks.
    pub fn health(&self) -> ConnectorHealth {
        self.health.clone()
    }

    /// The inbox (for operators' tools and tests).
    pub fn inbox(&self) -> Arc<dyn Inbox> {
        Arc::clone(&self.inbox)
    }

    /// Runs until `shutdown` is cancelled: consumes every cluster, calls `adapter` once per
    /// order in effect, reports its answers. On shutdown it stops taking records, lets
    /// in-flight orders finish within the shutdown grace (abandoning the rest to the next
    /// owner), commits, leaves the group, sends the reports that are due, and returns.
    pub async fn run<P: TransportPartner>(
        self,
        adapter: P,
        shutdown: CancellationToken,
    ) -> Result<(), ConnectorError> {
        // If this future is dropped instead of being let finish, the poll threads must still
        // stop (a runtime waits for its blocking threads when it shuts down).
        let shutdown = shutdown.child_token();
        let _stop_on_drop = shutdown.clone().drop_guard();
        let settings = &self.settings;
        let metrics = Arc::clone(&self.health.metrics);
        let sender = Arc::new(ReportSender::new(
            settings.partner_id.clone(),
            Arc::clone(&self.inbox),
            self.key.clone(),
            SenderSettings {
                audience: settings.audience.clone(),
                retry: ReportRetry {
                    attempts: settings.report_attempts,
                    backoff: settings.report_backoff,
                },
                rpc_timeout: settings.report_timeout,
                tls: settings.report_tls.clone(),
            },
            Arc::clone(&metrics),
            Arc::clone(&self.wake),
            settings.observer.clone(),
            Arc::clone(&settings.clock),
        ));
        let worker = Arc::new(Worker {
            partner_id: settings.partner_id.clone(),
            adapter: Arc::new(adapter),
            inbox: Arc::clone(&self.inbox),
            settings: WorkerSettings {
                adapter_timeout: settings.adapter_timeout,
                adapter_retry: AdapterRetry {
                    attempts: settings.adapter_attempts,
                    backoff: settings.adapter_backoff,
                },
            },
            metrics: Arc::clone(&metrics),
            reports: Arc::clone(&sender),
            observer: settings.observer.clone(),
            clock: Arc::clone(&settings.clock),
        });

        // Every client first: a bad setting fails before anything runs.
        let mut consumers = Vec::new();
        let mut producers = Vec::new();
        for (index, cluster) in settings.clusters.iter().enumerate() {
            let topic = cluster.topic_for(&settings.partner_id);
            let common = cluster.client_config(&settings.partner_id);
            // The consumer and the dead-letter producer of a cluster tell its outages once.
            let log = ClientLog::new(format!(
                "connector {} {}",
                settings.partner_id, cluster.name
            ));
            let producer: FutureProducer<LogContext> = common
                .clone()
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("message.timeout.ms", "10000")
                .create_with_context(LogContext::from(log.clone()))?;
            let sink = Arc::new(ClusterSink {
                name: cluster.name.clone(),
                dead_letter_topic: cluster
                    .dead_letter_topic
                    .clone()
                    .unwrap_or_else(|| format!("{topic}.dead-letter")),
                producer: producer.clone(),
            });
            producers.push(producer);
            let context = PollContext::new(
                Arc::clone(&worker),
                sink,
                tokio::runtime::Handle::current(),
                PollSettings {
                    topic: topic.clone(),
                    max_in_flight: settings.max_in_flight_per_partition,
                    revoke_bound: settings.revoke_bound,
                    shutdown_grace: settings.shutdown_grace,
                    commit_interval: settings.commit_interval,
                },
                self.health.clone(),
                index,
                log,
            );
            let group = cluster
                .group_id
                .clone()
                .unwrap_or_else(|| format!("waybill-connector.{}", settings.partner_id));
            let mut config = common.clone();
            config
                .set("group.id", &group)
                // Offsets are committed by the SDK only, up to the safe point.
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set(
                    "session.timeout.ms",
                    cluster.session_timeout.as_millis().to_string(),
                )
                .set(
                    "heartbeat.interval.ms",
                    (cluster.session_timeout.as_millis() / 3)
                        .max(100)
                        .to_string(),
                );
            // Defaults a property of the partner's own overrides: the fetch wait, and a
            // bounded prefetch. librdkafka otherwise queues up to 100,000 records or 64 MiB per
            // consumer ahead of the SDK, and a partner that is behind by minutes would hold
            // that much in memory (measured: 112 MiB at twice the sustainable rate) while the
            // SDK itself keeps at most `max_in_flight_per_partition` records a partition. 1 MiB
            // still holds hundreds of records; with a partner behind, the prefetched and
            // decompressed record sets were the largest share of the heap (heaptrack), so a
            // fetch also asks for 256 KiB a partition, not 1 MiB.
            let fetch_wait = cluster.fetch_wait.as_millis().max(1).to_string();
            for (key, value) in [
                ("fetch.wait.max.ms", fetch_wait.as_str()),
                ("queued.min.messages", "1000"),
                ("queued.max.messages.kbytes", "1024"),
                ("max.partition.fetch.bytes", "262144"),
            ] {
                if !cluster.properties.iter().any(|(set, _)| set == key) {
                    config.set(key, value);
                }
            }
            consumers.push((
                cluster.name.clone(),
                topic,
                group,
                create_consumer(&config, context)?,
            ));
        }

        let sender_stop = CancellationToken::new();
        let sender_task = tokio::spawn(Arc::clone(&sender).run(sender_stop.clone()));
        let chores = tokio::spawn(chores(
            self.health.clone(),
            Arc::clone(&settings.clock),
            settings.retention,
            settings.stats_interval,
            sender_stop.clone(),
        ));
        let mut polls = Vec::new();
        for (cluster, topic, group, consumer) in consumers {
            info!(partner = %settings.partner_id, cluster, topic, group, "connector consuming");
            let stop = shutdown.clone();
            polls.push(tokio::task::spawn_blocking(move || {
                poll_loop(consumer, stop)
            }));
        }
        self.health.running.store(true, Ordering::Relaxed);
        for poll in polls {
            if let Err(error) = poll.await {
                warn!(%error, "poll thread ended abnormally");
            }
        }
        self.health.running.store(false, Ordering::Relaxed);

        // Reports that are due go out now, within the grace; the rest wait in the inbox.
        let _ = tokio::time::timeout(settings.shutdown_grace, async {
            sender.finish_sending(settings.shutdown_grace).await;
            sender.send_due().await
        })
        .await;
        sender_stop.cancel();
        let _ = sender_task.await;
        let _ = chores.await;
        for producer in producers {
            let _ =
                tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        }
        info!(partner = %settings.partner_id, metrics = ?metrics.snapshot(), "connector stopped");
        Ok(())
    }
}

/// Periodic chores: forget settled inbox rows past retention, log the counters.
async fn chores(
    health: ConnectorHealth,
    clock: SharedClock,
    retention: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let before = clock.now()
            - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(7));
        match health.inbox.purge(&health.partner_id, before).await {
            Ok(purged) if purged > 0 => {
                info!(purged, "settled inbox rows past retention forgotten")
            }
            Ok(_) => {}
            Err(error) => warn!(%error, "cannot purge the inbox"),
        }
        let counts = health.inbox_counts().await.ok();
        info!(partner = %health.partner_id, metrics = ?health.metrics(), inbox = ?counts,
            clusters = ?health.clusters(), "connector stats");
    }
}
