//! Counters and health, for the partner's own metrics system: read
//! [`ConnectorHealth::metrics`] (counters since start) and [`ConnectorHealth::clusters`]
//! (assignment, in-flight records, lag) on whatever schedule it scrapes, and
//! [`ConnectorHealth::inbox_counts`] for the durable state. The SDK logs the same figures every
//! stats interval.
//!
//! The same figures as Prometheus series (`waybill_connector_*`), in the
//! [`prometheus_client`] registry the partner's program passes (the SDK keeps no registry of
//! its own and serves nothing): [`ConnectorHealth::register_metrics`] registers them in a
//! registry with the prefix [`METRICS_PREFIX`] and returns the [`InboxGauges`] to refresh
//! before each scrape; the program serves the registry on a port its scraper reaches.
//!
//! ```no_run
//! # async fn scrape(connector: &waybill_connector_sdk::Connector) -> Result<String, std::fmt::Error> {
//! use prometheus_client::{encoding::text::encode, registry::Registry};
//! use waybill_connector_sdk::metrics::METRICS_PREFIX;
//!
//! let mut registry = Registry::default();
//! let inbox = connector
//!     .health()
//!     .register_metrics(registry.sub_registry_with_prefix(METRICS_PREFIX));
//! // At every scrape (an HTTP handler of the program's own):
//! inbox.refresh().await;
//! let mut text = String::new();
//! encode(&mut text, &registry)?;
//! # Ok(text) }
//! ```

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use futures::future::BoxFuture;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::ConstCounter,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use crate::{
    domain::order::placed_to_answered,
    inbox::{Inbox, InboxCounts, InboxError},
};

/// The prefix of the connector's series: register them in a registry with it
/// (`registry.sub_registry_with_prefix(METRICS_PREFIX)`, or a `Metrics::register(METRICS_PREFIX,
/// …)` of the services' kit), so that they are named `waybill_connector_*`.
pub const METRICS_PREFIX: &str = "waybill_connector";

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// Counters since the connector started.
        #[derive(Debug, Default)]
        pub struct ConnectorMetrics {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
            /// From an order's placing to the adapter's answer (seconds).
            pub(crate) placed_to_answered: PlacedToAnswered,
        }

        impl ConnectorMetrics {
            /// `(name, help, value)` of every counter.
            fn counters(&self) -> Counters {
                vec![$((stringify!($name), concat!($($doc),*).trim_ascii(), self.$name.load(Ordering::Relaxed)),)*]
            }
        }

        /// A copy of [`ConnectorMetrics`] at one instant.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct MetricsSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl ConnectorMetrics {
            /// The counters now.
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Records read from the partner topics.
    records_received,
    /// Orders handed to the adapter for the first time (in this process).
    orders_started,
    /// Adapter calls, retries included.
    adapter_calls,
    /// Adapter calls that failed retryably or timed out and were retried.
    adapter_retries,
    /// Adapter calls that timed out.
    adapter_timeouts,
    /// Orders the adapter accepted.
    orders_accepted,
    /// Orders the adapter rejected.
    orders_rejected,
    /// Deliveries answered from the inbox without calling the adapter (duplicates).
    duplicates_skipped,
    /// Records set aside (undecodable, permanently failing, retries exhausted).
    set_aside,
    /// Dead-letter records that could not be produced (the inbox row still keeps them).
    dead_letter_failures,
    /// Reports StatusIngest confirmed (duplicates included).
    reports_confirmed,
    /// Reports StatusIngest answered `duplicate = true`.
    reports_duplicate,
    /// Report attempts that failed and were scheduled again.
    report_retries,
    /// Reports refused for good.
    reports_refused,
    /// Offset commits that succeeded.
    commits,
    /// Offset commits that failed (retried at the next interval).
    commit_failures,
    /// Completions that arrived after their partition was revoked, and were ignored.
    fenced_completions,
    /// Records abandoned at revocation or shutdown (redone by the next owner).
    abandoned,
    /// Inbox operations that failed and were retried.
    inbox_errors,
}

impl ConnectorMetrics {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the time from `placed_at` (Waybill's clock) to `now` (this host's clock) when
    /// the adapter answered an order for the first time.
    pub(crate) fn observe_answered(
        &self,
        placed_at: Option<&prost_types::Timestamp>,
        now: chrono::DateTime<chrono::Utc>,
    ) {
        if let Some(seconds) = placed_to_answered(placed_at, now) {
            self.placed_to_answered.0.observe(seconds);
        }
    }
}

/// The placed → answered histogram (a newtype for its buckets).
#[derive(Debug)]
pub(crate) struct PlacedToAnswered(Histogram);

impl Default for PlacedToAnswered {
    fn default() -> Self {
        // 5 ms .. ~40 min, doubling.
        Self(Histogram::new(exponential_buckets(0.005, 2.0, 19)))
    }
}

/// One assigned partition's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionHealth {
    /// Records received and not yet safe.
    pub in_flight: usize,
    /// The offset committed last (the next to read after a restart), if any.
    pub committed: Option<i64>,
    /// The broker's high watermark minus the safe offset, as last seen (an estimate).
    pub lag: Option<i64>,
    /// Whether consumption is paused (too many records in flight).
    pub paused: bool,
}

/// One cluster's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterHealth {
    /// The cluster's name.
    pub name: String,
    /// Whether its poll loop runs.
    pub polling: bool,
    /// Assigned partitions by number.
    pub partitions: BTreeMap<i32, PartitionHealth>,
}

/// The connector's health, shared with its loops.
#[derive(Debug, Clone)]
pub struct ConnectorHealth {
    pub(crate) partner_id: String,
    pub(crate) metrics: Arc<ConnectorMetrics>,
    pub(crate) clusters: Arc<Mutex<Vec<ClusterHealth>>>,
    pub(crate) running: Arc<AtomicBool>,
    pub(crate) inbox: Arc<dyn Inbox>,
}

impl ConnectorHealth {
    /// Whether the connector is running (started and not stopping).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// The counters since start.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// Each cluster's assignment and lag.
    pub fn clusters(&self) -> Vec<ClusterHealth> {
        self.clusters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The inbox's counts by state (orders, reports, set-aside records).
    pub async fn inbox_counts(&self) -> Result<InboxCounts, InboxError> {
        self.inbox.counts(&self.partner_id).await
    }

    pub(crate) fn update_cluster(&self, index: usize, update: impl FnOnce(&mut ClusterHealth)) {
        let mut clusters = self
            .clusters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cluster) = clusters.get_mut(index) {
            update(cluster);
        }
    }
}

impl ConnectorHealth {
    /// Registers this connector's Prometheus series in `registry`; the same as
    /// [`register_metrics`] with this one connector.
    pub fn register_metrics(&self, registry: &mut Registry) -> InboxGauges {
        register_metrics(registry, std::slice::from_ref(self))
    }
}

/// Registers the Prometheus series of every connector of this process in `registry`, in one
/// call (a second call would repeat the metric families): the counters above, each assigned
/// partition's in-flight records and lag, the inbox's counts by state and the placed →
/// acknowledged latency histogram, every sample labelled with its `partner`. Names are
/// unprefixed (`records_received`, …): pass a registry with the prefix [`METRICS_PREFIX`]
/// for the documented `waybill_connector_*`.
///
/// The inbox's counts are read from the inbox, which takes a query: run the returned
/// [`InboxGauges::refresh`] before each scrape (with the services' kit,
/// `metrics.on_scrape(move || inbox.refresh())`).
pub fn register_metrics(registry: &mut Registry, connectors: &[ConnectorHealth]) -> InboxGauges {
    let connectors: Vec<Watched> = connectors
        .iter()
        .map(|health| Watched {
            health: health.clone(),
            inbox_counts: Arc::default(),
        })
        .collect();
    registry.register_collector(Box::new(ConnectorCollector {
        connectors: connectors.clone(),
    }));
    InboxGauges { connectors }
}

/// The inbox counts behind the `inbox_*` gauges of [`register_metrics`]' connectors. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct InboxGauges {
    connectors: Vec<Watched>,
}

impl InboxGauges {
    /// Reads every connector's inbox counts into the gauges (an inbox that cannot be read
    /// keeps its last values, with a warning). Until it first runs, the inbox gauges have no
    /// samples.
    pub fn refresh(&self) -> BoxFuture<'static, ()> {
        let connectors = self.connectors.clone();
        Box::pin(async move {
            for watched in connectors {
                match watched.health.inbox_counts().await {
                    Ok(counts) => {
                        *watched
                            .inbox_counts
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(counts);
                    }
                    Err(error) => {
                        tracing::warn!(%error, partner = %watched.health.partner_id, "metrics: cannot read the inbox counts");
                    }
                }
            }
        })
    }
}

/// One connector and its inbox counts as read by the last scrape's refresher.
#[derive(Debug, Clone)]
struct Watched {
    health: ConnectorHealth,
    inbox_counts: Arc<Mutex<Option<InboxCounts>>>,
}

/// Encodes the connectors' figures at scrape time.
#[derive(Debug)]
struct ConnectorCollector {
    connectors: Vec<Watched>,
}

type Labels = Vec<(&'static str, String)>;

/// `(name, help, value)` of every counter of one connector.
type Counters = Vec<(&'static str, &'static str, u64)>;

impl Collector for ConnectorCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let partner = |watched: &Watched| vec![("partner", watched.health.partner_id.clone())];
        let counters: Vec<(Labels, Counters)> = self
            .connectors
            .iter()
            .map(|watched| (partner(watched), watched.health.metrics.counters()))
            .collect();
        let names = counters
            .first()
            .map(|(_, values)| values.len())
            .unwrap_or_default();
        for index in 0..names {
            let Some((name, help, _)) = counters.first().and_then(|(_, values)| values.get(index))
            else {
                continue;
            };
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, values) in &counters {
                if let Some((_, _, value)) = values.get(index) {
                    ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
                }
            }
        }
        let mut histogram = encoder.encode_descriptor(
            "placed_to_acknowledged",
            "From the order's placing (Waybill's clock) to the adapter's first answer (this host's clock), when the RECEIVED_BY_PARTNER or REJECTED_BY_PARTNER report is queued",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for watched in &self.connectors {
            watched
                .health
                .metrics
                .placed_to_answered
                .0
                .encode(histogram.encode_family(&partner(watched))?)?;
        }
        let running: Vec<(Labels, i64)> = self
            .connectors
            .iter()
            .map(|watched| (partner(watched), i64::from(watched.health.is_running())))
            .collect();
        gauge(
            &mut encoder,
            "running",
            "1 while the connector runs (started and not stopping)",
            &running,
        )?;
        let mut in_flight = Vec::new();
        let mut lag = Vec::new();
        for watched in &self.connectors {
            for cluster in watched.health.clusters() {
                for (partition, figures) in &cluster.partitions {
                    let mut labels = partner(watched);
                    labels.push(("cluster", cluster.name.clone()));
                    labels.push(("partition", partition.to_string()));
                    in_flight.push((
                        labels.clone(),
                        i64::try_from(figures.in_flight).unwrap_or(i64::MAX),
                    ));
                    if let Some(records) = figures.lag {
                        lag.push((labels, records));
                    }
                }
            }
        }
        gauge(
            &mut encoder,
            "partition_in_flight",
            "Records received from an assigned partition and not yet safe",
            &in_flight,
        )?;
        gauge(
            &mut encoder,
            "partition_lag",
            "Records behind: the partition's high watermark minus the safe offset, as last seen",
            &lag,
        )?;
        let mut orders = Vec::new();
        let mut reports = Vec::new();
        let mut set_aside = Vec::new();
        for watched in &self.connectors {
            let counts = watched
                .inbox_counts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let Some(counts) = counts else { continue };
            let state = |s: &str| {
                let mut labels = partner(watched);
                labels.push(("state", s.to_owned()));
                labels
            };
            orders.extend([
                (state("started"), counts.started),
                (state("accepted"), counts.accepted),
                (state("rejected"), counts.rejected),
                (state("set_aside"), counts.orders_set_aside),
            ]);
            reports.extend([
                (state("pending"), counts.reports_pending),
                (state("confirmed"), counts.reports_confirmed),
                (state("refused"), counts.reports_refused),
            ]);
            set_aside.push((partner(watched), counts.records_set_aside));
        }
        gauge(
            &mut encoder,
            "inbox_orders",
            "Orders in the inbox by state (started: no stored answer yet)",
            &orders,
        )?;
        gauge(
            &mut encoder,
            "inbox_reports",
            "Status reports in the inbox by state (pending: not yet confirmed by StatusIngest)",
            &reports,
        )?;
        gauge(
            &mut encoder,
            "inbox_records_set_aside",
            "Records set aside (undecodable, or orders set aside)",
            &set_aside,
        )?;
        Ok(())
    }
}

/// One gauge family: a descriptor and one sample per label set.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;
    use crate::inbox::SqlInbox;

    #[tokio::test]
    async fn the_series_keep_their_names_in_the_registry_the_program_passes() {
        let dir =
            std::env::temp_dir().join(format!("waybill-sdk-metrics-{}", uuid::Uuid::new_v4()));
        let inbox = SqlInbox::open_sqlite(dir.join("inbox.db"))
            .await
            .expect("inbox");
        let health = ConnectorHealth {
            partner_id: "acme".to_owned(),
            metrics: Arc::new(ConnectorMetrics::default()),
            clusters: Arc::new(Mutex::new(Vec::new())),
            running: Arc::new(AtomicBool::new(true)),
            inbox: Arc::new(inbox),
        };
        ConnectorMetrics::add(&health.metrics.records_received);
        let mut registry = Registry::default();
        let inbox = health.register_metrics(registry.sub_registry_with_prefix(METRICS_PREFIX));
        let scrape = |registry: &Registry| {
            let mut text = String::new();
            encode(&mut text, registry).expect("encodes");
            text
        };
        let before = scrape(&registry);
        assert!(
            before.contains("waybill_connector_records_received_total{partner=\"acme\"} 1\n"),
            "{before}"
        );
        assert!(
            before.contains("waybill_connector_running{partner=\"acme\"} 1\n"),
            "{before}"
        );
        assert!(
            !before.contains("waybill_connector_inbox_orders{"),
            "no inbox samples before a refresh: {before}"
        );
        inbox.refresh().await;
        let after = scrape(&registry);
        assert!(
            after
                .contains("waybill_connector_inbox_orders{partner=\"acme\",state=\"started\"} 0\n"),
            "{after}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
