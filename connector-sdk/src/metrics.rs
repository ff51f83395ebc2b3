//! Counters and health, for the partner's own metrics system: read
//! [`ConnectorHealth::metrics`] (counters since start) and [`ConnectorHealth::clusters`]
//! (assignment, in-flight records, lag) on whatever schedule it scrapes, and
//! [`ConnectorHealth::inbox_counts`] for the durable state. The SDK logs the same figures every
//! stats interval.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use crate::inbox::{Inbox, InboxCounts, InboxError};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counters since the connector started.
        #[derive(Debug, Default)]
        pub struct ConnectorMetrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of [`ConnectorMetrics`] at one instant.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct MetricsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
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
