//! Asking the broker how far a partner's consumers have read its topic, so that the handover
//! deadline can tell a partner that is behind from one that is gone. The decision is
//! [`crate::domain::cycle::handover`]'s; this module only asks.
//!
//! For each partner of an overdue batch, one short-lived consumer client with the partner's
//! group id — created for the question, never subscribed (so it never joins the group or moves
//! its offsets), dropped with the answer — asks:
//!
//! 1. whether the group has members (`ListGroups`, then `DescribeGroups`);
//! 2. if it has, its committed offsets on the partitions the batch's orders landed on
//!    (`OffsetFetch`), and each of those partitions' low and high watermarks (`ListOffsets`).
//!
//! The group is the connector SDK's default, `waybill-connector.<partner id>`
//! ([`connector_group`]). A partner whose connector is configured with another group id has no
//! such group on the broker: its overdue orders follow the re-send rule, as do those of a
//! partner the broker cannot answer for (an error, a timeout, or a broker without these APIs,
//! such as librdkafka's mock cluster that `waybill dev` embeds).
//!
//! The calls are blocking librdkafka calls: they run on the blocking pool, every partner at
//! once, all bounded by one timeout ([`GroupProbe::new`]). Nothing is kept past the batch.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use rdkafka::{
    ClientContext, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    error::{KafkaError, KafkaResult},
};
use tracing::{info, warn};
use waybill_service_kit::kafka_log::ClientLog;

use super::KafkaSettings;
use crate::domain::cycle::handover::{GroupProgress, PartitionProgress, Progress};

/// The consumer group of the connector SDK's default configuration, without the partner id.
pub const CONNECTOR_GROUP_PREFIX: &str = "waybill-connector.";

/// The longest the broker is given to answer for one batch.
pub const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The consumer group partner `partner_id`'s connector joins by default.
pub fn connector_group(partner_id: &str) -> String {
    format!("{CONNECTOR_GROUP_PREFIX}{partner_id}")
}

/// One partner to ask about: its topic and the partitions its overdue orders landed on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ask {
    /// The partner's topic.
    pub topic: String,
    /// The partitions of interest.
    pub partitions: BTreeSet<i32>,
}

/// What the broker told about a batch's partners, and for which it could not tell.
#[derive(Debug, Default)]
pub struct Answers {
    /// Groups the broker told about, by partner id.
    pub progress: Progress,
    /// `(partner id, error)` for each partner the broker did not answer for.
    pub failed: Vec<(String, String)>,
}

/// Asks the broker about partners' consumer groups (see the module documentation).
#[derive(Clone)]
pub struct GroupProbe {
    settings: KafkaSettings,
    timeout: Duration,
    /// Shared by every client the probe creates, so a broker outage is told once.
    log: ClientLog,
    /// Whether the latest question failed (a run of failures is warned about once).
    failing: Arc<AtomicBool>,
}

impl std::fmt::Debug for GroupProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupProbe")
            .field("brokers", &self.settings.brokers)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl GroupProbe {
    /// A probe of `settings`' brokers that waits at most `timeout` (capped at
    /// [`MAX_PROBE_TIMEOUT`]) for an answer.
    pub fn new(settings: &KafkaSettings, timeout: Duration) -> Self {
        Self {
            settings: settings.clone(),
            timeout: timeout.min(MAX_PROBE_TIMEOUT),
            log: ClientLog::new("waybill-dispatcher group probe"),
            failing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The longest [`Self::ask`] waits.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Asks about every partner in `asks` (by partner id) at once; returns within the timeout.
    pub async fn ask(&self, asks: BTreeMap<String, Ask>) -> Answers {
        let deadline = Instant::now() + self.timeout;
        let questions = asks.into_iter().map(|(partner_id, ask)| {
            let (settings, log) = (self.settings.clone(), self.log.clone());
            async move {
                let group = connector_group(&partner_id);
                let asked = tokio::task::spawn_blocking(move || {
                    ask_blocking(&settings, log, &group, &ask, deadline)
                });
                // The calls are bounded by the deadline; this bounds the set-up too.
                let answer = match tokio::time::timeout_at(deadline.into(), asked).await {
                    Ok(Ok(answer)) => answer.map_err(|error| error.to_string()),
                    Ok(Err(join)) => Err(format!("the question failed: {join}")),
                    Err(_) => Err("no answer in time".to_owned()),
                };
                (partner_id, answer)
            }
        });
        let mut answers = Answers::default();
        for (partner_id, answer) in futures::future::join_all(questions).await {
            match answer {
                Ok(group) => answers.progress.insert(partner_id, group),
                Err(error) => answers.failed.push((partner_id, error)),
            }
        }
        self.note(&answers);
        answers
    }

    /// One warning when questions start failing, one line when they work again.
    fn note(&self, answers: &Answers) {
        let failed = answers.failed.first();
        let was_failing = match failed {
            Some(_) => self.failing.swap(true, Ordering::Relaxed),
            None if answers.progress.is_empty() => return,
            None => self.failing.swap(false, Ordering::Relaxed),
        };
        match (failed, was_failing) {
            (Some((partner_id, error)), false) => warn!(
                partner_id,
                %error,
                failed = answers.failed.len(),
                "cannot ask the broker how far partners' consumers have read; their overdue \
                 orders follow the re-send rule"
            ),
            (None, true) => info!("the broker tells how far partners' consumers have read again"),
            _ => {}
        }
    }
}

/// The probe's client: librdkafka's lines go through the shared [`ClientLog`].
struct ProbeContext(ClientLog);

impl ClientContext for ProbeContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.0.log(level as i32, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(error.rdkafka_error_code(), &error, reason);
    }
}

impl ConsumerContext for ProbeContext {}

/// Asks about `group` on `ask.topic`, by `deadline` (blocking).
fn ask_blocking(
    settings: &KafkaSettings,
    log: ClientLog,
    group: &str,
    ask: &Ask,
    deadline: Instant,
) -> KafkaResult<GroupProgress> {
    let left = || deadline.saturating_duration_since(Instant::now());
    // Never subscribed, so it never joins the group; and it never commits.
    let consumer: BaseConsumer<ProbeContext> = settings
        .group_probe_config(group)
        .create_with_context(ProbeContext(log))?;
    let groups = consumer.fetch_group_list(Some(group), left())?;
    let live = groups
        .groups()
        .iter()
        .any(|g| g.name() == group && !g.members().is_empty());
    let mut progress = GroupProgress {
        live,
        partitions: HashMap::new(),
    };
    if !live {
        return Ok(progress);
    }
    let mut wanted = TopicPartitionList::new();
    for &partition in &ask.partitions {
        wanted.add_partition(&ask.topic, partition);
    }
    let committed = consumer.committed_offsets(wanted, left())?;
    for &partition in &ask.partitions {
        let committed = match committed.find_partition(&ask.topic, partition) {
            Some(element) => {
                element.error()?;
                match element.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                }
            }
            None => None,
        };
        let (low, high) = consumer.fetch_watermarks(&ask.topic, partition, left())?;
        progress.partitions.insert(
            partition,
            PartitionProgress {
                low,
                high,
                committed,
            },
        );
    }
    Ok(progress)
}
