//! Sending reports: the inbox's pending reports go to the StatusIngest address each order
//! carried, each attempt with a fresh token (a new `jti`) for the same report id, so a retry
//! is answered as a duplicate instead of refused as a replay. Transient failures are retried
//! with exponential backoff and jitter, kept in the inbox (so a restart resumes them);
//! `duplicate = true` is success; a refusal that can never pass is kept as `refused`.
//!
//! **A pipeline, not rounds.** A report the worker has just stored is handed over at once
//! ([`ReportSender::submit`]) and sent on its own task: nothing waits for a batch or a
//! timer. The inbox scan ([`ReportSender::run`]) is for everything else: reports due for a
//! retry, later statuses from the adapter, reports left by a restart or by another instance
//! sharing the inbox. A report being sent is in `sending` and is skipped by the scan, so it
//! is not sent twice at once (a second copy would be a harmless duplicate anyway). At most
//! [`MAX_SENDING`] reports are on the wire at once.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use tokio::{
    sync::{Notify, Semaphore},
    task::JoinSet,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, error, info, warn};
use waybill_proto::{
    headers::RETRY_AFTER_MS,
    v1::{ReportStatusRequest, status_ingest_client::StatusIngestClient},
};

use crate::{
    domain::{
        backoff::Backoff,
        report_outcome::{ReportOutcome, classify},
    },
    inbox::{Inbox, StoredReport},
    metrics::ConnectorMetrics,
    observe::{Observer, Step},
    signing::ReportSigningKey,
};

/// How long each report token is valid (StatusIngest allows at most 300 s).
const TOKEN_LIFETIME_SECONDS: i64 = 120;
/// Reports read per scan.
const BATCH: i64 = 256;
/// Reports on the wire at once: half of StatusIngest's default in-flight limit per connection
/// (`ServerLimits::concurrency_per_connection`, 256), past which it sheds calls with
/// `UNAVAILABLE`; a connector alone never meets that, so a burst of reports is queued here
/// instead of refused there and retried after a backoff.
pub(crate) const MAX_SENDING: usize = 128;
/// Reports the pipeline holds in memory at once (on the wire or waiting for a place there).
/// Past it a stored report stays in the inbox, where the scan finds it: when StatusIngest is
/// slower than the partner, the queue grows on disk, not in memory (measured before the bound:
/// 146 MiB with reports half a minute behind). Until the scan has caught up, later reports
/// queue behind those in the inbox rather than overtaking them.
pub(crate) const MAX_PENDING: usize = 8 * MAX_SENDING;
/// The longest retry delay StatusIngest may ask for and get: a longer one is the backoff's.
const QUICK_RETRY: Duration = Duration::from_millis(250);
/// Retries made at StatusIngest's request in a row before the backoff takes over.
const QUICK_RETRIES: u32 = 8;
/// The longest the scan sleeps (another instance sharing the inbox may have left reports).
const SCAN_AT_MOST_EVERY: Duration = Duration::from_secs(5);

/// Settings of the report sender.
#[derive(Debug, Clone)]
pub(crate) struct SenderSettings {
    pub audience: String,
    pub backoff: Backoff,
    pub attempt_budget: u32,
    pub rpc_timeout: Duration,
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

/// Sends the inbox's pending reports.
#[derive(Debug)]
pub(crate) struct ReportSender {
    pub partner_id: String,
    pub inbox: Arc<dyn Inbox>,
    pub key: ReportSigningKey,
    pub settings: SenderSettings,
    pub metrics: Arc<ConnectorMetrics>,
    pub wake: Arc<Notify>,
    pub observer: Observer,
    clients: Mutex<HashMap<String, StatusIngestClient<Channel>>>,
    /// Report ids being sent now (by the pipeline or the scan).
    sending: Mutex<HashSet<String>>,
    permits: Semaphore,
    /// Whether reports were left to the scan because the pipeline was full: until a scan sees
    /// every due report, new ones go to the scan too (first stored, first sent), and the scan
    /// is woken whenever the pipeline has room.
    overflowed: AtomicBool,
    /// The pipeline's tasks, waited for at shutdown.
    tasks: TaskTracker,
}

impl ReportSender {
    pub fn new(
        partner_id: String,
        inbox: Arc<dyn Inbox>,
        key: ReportSigningKey,
        settings: SenderSettings,
        metrics: Arc<ConnectorMetrics>,
        wake: Arc<Notify>,
        observer: Observer,
    ) -> Self {
        Self {
            partner_id,
            inbox,
            key,
            settings,
            metrics,
            wake,
            observer,
            clients: Mutex::new(HashMap::new()),
            sending: Mutex::new(HashSet::new()),
            permits: Semaphore::new(MAX_SENDING),
            overflowed: AtomicBool::new(false),
            tasks: TaskTracker::new(),
        }
    }

    /// Sends `report` now, on its own task (a report just stored by the worker), unless
    /// [`MAX_PENDING`] are held already or earlier reports wait in the inbox: then it waits
    /// there for the scan, woken here.
    pub fn submit(self: &Arc<Self>, report: StoredReport) {
        {
            let mut sending = self.sending();
            if sending.len() >= MAX_PENDING || self.overflowed.load(Ordering::Relaxed) {
                drop(sending);
                self.overflowed.store(true, Ordering::Relaxed);
                self.wake.notify_one();
                return;
            }
            if !sending.insert(report.report_id.clone()) {
                return;
            }
        }
        let sender = Arc::clone(self);
        self.tasks
            .spawn(async move { sender.send_claimed(report).await });
    }

    /// Waits, at most `grace`, for the reports the pipeline is sending.
    pub async fn finish_sending(&self, grace: Duration) {
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
    }

    fn sending(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.sending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks `report_id` as being sent; `false` when it is already.
    fn claim(&self, report_id: &str) -> bool {
        self.sending().insert(report_id.to_owned())
    }

    async fn send_claimed(&self, mut report: StoredReport) {
        let report_id = report.report_id.clone();
        // The semaphore is never closed.
        if let Ok(_permit) = self.permits.acquire().await {
            // A retry StatusIngest asks for within moments is made here, still claimed,
            // rather than by the scan: doubling from the delay it asked for, at most
            // QUICK_RETRY each and QUICK_RETRIES in all (about a second), then the backoff's.
            let mut quick = 0_u32;
            while let Some(asked) = self.attempt(report.clone(), quick < QUICK_RETRIES).await {
                let delay = asked.saturating_mul(1 << quick.min(16)).min(QUICK_RETRY);
                quick += 1;
                tokio::time::sleep(delay).await;
                report.attempts += 1;
            }
        }
        let room = {
            let mut sending = self.sending();
            sending.remove(&report_id);
            sending.len() < MAX_PENDING
        };
        // Reports wait in the inbox since the pipeline was full: the scan takes them now.
        if room && self.overflowed.load(Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }

    /// Scans for due reports until `stop` is cancelled; woken by reports the pipeline does
    /// not carry (later statuses, redeliveries, failed attempts), else by the earliest retry
    /// time (at most every 5 s, so another instance's reports in a shared inbox are picked
    /// up too).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            if stop.is_cancelled() {
                return;
            }
            let sent = self.send_due().await;
            if sent > 0 {
                continue;
            }
            let wait = match self.inbox.next_report_due(&self.partner_id).await {
                // Due now yet nothing sent: every due report is being sent by the pipeline,
                // which wakes this loop if one fails.
                Ok(Some(due)) if due <= Utc::now() => SCAN_AT_MOST_EVERY,
                Ok(Some(due)) => (due - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(SCAN_AT_MOST_EVERY),
                Ok(None) => SCAN_AT_MOST_EVERY,
                Err(error) => {
                    ConnectorMetrics::add(&self.metrics.inbox_errors);
                    warn!(%error, "cannot read the next report time from the inbox");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One scan: sends every report due now that is not being sent already, concurrently,
    /// and waits for them. Returns how many were attempted.
    pub async fn send_due(self: &Arc<Self>) -> usize {
        let due = match self
            .inbox
            .due_reports(&self.partner_id, Utc::now(), BATCH)
            .await
        {
            Ok(due) => due,
            Err(error) => {
                ConnectorMetrics::add(&self.metrics.inbox_errors);
                warn!(%error, "cannot read due reports from the inbox");
                return 0;
            }
        };
        // Every due report is in hand: whatever the pipeline left to the inbox is caught up,
        // and new reports may take the pipeline again.
        if due.len() < usize::try_from(BATCH).unwrap_or(usize::MAX) {
            self.overflowed.store(false, Ordering::Relaxed);
        }
        let mut attempts = JoinSet::new();
        for report in due {
            if !self.claim(&report.report_id) {
                continue;
            }
            let sender = Arc::clone(self);
            attempts.spawn(async move { sender.send_claimed(report).await });
        }
        let count = attempts.len();
        while attempts.join_next().await.is_some() {}
        count
    }

    /// The client for `reply_to`; an error status when no client can be made (an invalid
    /// address is refused for good; TLS without a configured CA is retried, so the report
    /// lands once the connector restarts with one).
    fn client(&self, reply_to: &str) -> Result<StatusIngestClient<Channel>, tonic::Status> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = clients.get(reply_to) {
            return Ok(client.clone());
        }
        let mut endpoint = Endpoint::from_shared(reply_to.to_owned())
            .map_err(|e| {
                tonic::Status::invalid_argument(format!(
                    "reply-to {reply_to:?} is not a valid address: {e}"
                ))
            })?
            .connect_timeout(Duration::from_secs(5))
            .timeout(self.settings.rpc_timeout);
        if reply_to.starts_with("https://") {
            let Some(tls) = self.settings.tls.clone() else {
                return Err(tonic::Status::unavailable(format!(
                    "reply-to {reply_to:?} uses TLS but no CA is configured (ConnectorBuilder::report_tls_ca, WAYBILL_REPORT_TLS_CA)"
                )));
            };
            endpoint = endpoint.tls_config(tls).map_err(|e| {
                tonic::Status::unavailable(format!("TLS settings for {reply_to:?}: {e}"))
            })?;
        }
        let client = StatusIngestClient::new(endpoint.connect_lazy());
        clients.insert(reply_to.to_owned(), client.clone());
        Ok(client)
    }

    fn request(&self, report: &StoredReport) -> ReportStatusRequest {
        self.key.signed_request(
            &self.partner_id,
            report,
            &self.settings.audience,
            Utc::now(),
            TOKEN_LIFETIME_SECONDS,
        )
    }

    /// One attempt, its outcome stored in the inbox. `Some(delay)` when StatusIngest asked for
    /// a retry that soon ([`RETRY_AFTER_MS`], at most [`QUICK_RETRY`]): the caller makes it.
    async fn attempt(&self, report: StoredReport, quick_allowed: bool) -> Option<Duration> {
        let attempt = u32::try_from(report.attempts)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let result = match self.client(&report.reply_to) {
            Ok(mut client) => {
                let mut call = tonic::Request::new(self.request(&report));
                if let Some(traceparent) = report.traceparent.as_deref()
                    && let Ok(value) = traceparent.parse()
                {
                    call.metadata_mut().insert("traceparent", value);
                }
                self.observer.step(&report.order_id, Step::ReportSent);
                client.report_status(call).await
            }
            Err(status) => Err(status),
        };
        let outcome = match &result {
            Ok(_) => ReportOutcome::Confirmed,
            Err(status) => classify(status.code()),
        };
        let mut quick = None;
        let stored = match (outcome, &result) {
            (ReportOutcome::Confirmed, Ok(response)) => {
                let duplicate = response.get_ref().duplicate;
                self.observer.step(&report.order_id, Step::ReportConfirmed);
                ConnectorMetrics::add(&self.metrics.reports_confirmed);
                if duplicate {
                    ConnectorMetrics::add(&self.metrics.reports_duplicate);
                }
                debug!(order_id = %report.order_id, report_id = %report.report_id,
                    status = %report.status, attempt, duplicate, "report confirmed");
                self.inbox
                    .report_confirmed(&self.partner_id, &report.report_id)
                    .await
            }
            (ReportOutcome::Retry, Err(status)) if attempt < self.settings.attempt_budget => {
                ConnectorMetrics::add(&self.metrics.report_retries);
                quick = retry_after(status).filter(|_| quick_allowed);
                let delay = quick.unwrap_or_else(|| self.settings.backoff.jittered(attempt));
                let next = Utc::now()
                    + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero());
                let message = format!("{:?}: {}", status.code(), status.message());
                if attempt == 1 && quick.is_none() {
                    warn!(order_id = %report.order_id, report_id = %report.report_id,
                        reply_to = %report.reply_to, attempt, error = %message,
                        retry_in_ms = delay.as_millis() as u64, "report failed, will retry");
                } else {
                    debug!(order_id = %report.order_id, report_id = %report.report_id, attempt,
                        error = %message, retry_in_ms = delay.as_millis() as u64, "report failed again");
                }
                let stored = self
                    .inbox
                    .report_failed(&self.partner_id, &report.report_id, next, &message)
                    .await;
                if quick.is_none() {
                    // The scan times the retry.
                    self.wake.notify_one();
                }
                stored
            }
            (_, Err(status)) => {
                ConnectorMetrics::add(&self.metrics.reports_refused);
                let message = format!("{:?}: {}", status.code(), status.message());
                error!(order_id = %report.order_id, report_id = %report.report_id,
                    status = %report.status, attempt, error = %message,
                    "report refused, kept in the inbox as refused");
                self.inbox
                    .report_refused(&self.partner_id, &report.report_id, &message)
                    .await
            }
            (_, Ok(_)) => Ok(()),
        };
        if let Err(error) = stored {
            // The report stays pending and is sent again: a duplicate at worst.
            ConnectorMetrics::add(&self.metrics.inbox_errors);
            warn!(order_id = %report.order_id, report_id = %report.report_id, %error,
                "cannot record the report's outcome in the inbox");
            return None;
        } else if attempt > 1 && outcome == ReportOutcome::Confirmed {
            info!(order_id = %report.order_id, report_id = %report.report_id, attempt,
                "report landed after retries");
        }
        quick
    }
}

/// The retry delay StatusIngest asked for in `status`, if any and at most [`QUICK_RETRY`].
fn retry_after(status: &tonic::Status) -> Option<Duration> {
    let millis: u64 = status
        .metadata()
        .get(RETRY_AFTER_MS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_millis(millis)).filter(|delay| *delay <= QUICK_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(retry_after: Option<&str>) -> tonic::Status {
        let mut status = tonic::Status::unavailable("the order is being handed to you");
        if let Some(value) = retry_after {
            status
                .metadata_mut()
                .insert(RETRY_AFTER_MS, value.parse().expect("ascii"));
        }
        status
    }

    /// A StatusIngest that takes connections and never answers: every report sent to it
    /// stays on the wire.
    async fn silent_status_ingest() -> (tokio::net::TcpListener, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = format!("http://{}", listener.local_addr().expect("addr"));
        (listener, addr)
    }

    #[tokio::test]
    async fn past_the_pending_bound_a_stored_report_waits_in_the_inbox_for_the_scan() {
        let (_listener, reply_to) = silent_status_ingest().await;
        let dir =
            std::env::temp_dir().join(format!("waybill-sdk-pending-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let inbox = crate::inbox::SqlInbox::open_sqlite(dir.join("inbox.db"))
            .await
            .expect("inbox");
        let key = ReportSigningKey::from_key(
            waybill_token::SigningKey::from_bytes(&[7; 32]),
            "acme-test",
        )
        .expect("key");
        let wake = Arc::new(Notify::new());
        let sender = Arc::new(ReportSender::new(
            "acme".to_owned(),
            Arc::new(inbox),
            key,
            SenderSettings {
                audience: "waybill-test".to_owned(),
                backoff: crate::domain::backoff::Backoff {
                    base: Duration::from_millis(100),
                    cap: Duration::from_secs(1),
                },
                attempt_budget: 3,
                rpc_timeout: Duration::from_secs(600),
                tls: None,
            },
            Arc::new(ConnectorMetrics::default()),
            wake.clone(),
            Observer::default(),
        ));
        let report = |n: usize| {
            StoredReport::pending(
                format!("report-{n}"),
                uuid::Uuid::new_v4().to_string(),
                "RECEIVED_BY_PARTNER",
                format!("T{n}"),
                String::new(),
                String::new(),
                false,
                Utc::now(),
                reply_to.clone(),
                None,
            )
        };
        for n in 0..MAX_PENDING {
            sender.submit(report(n));
        }
        assert_eq!(sender.sending().len(), MAX_PENDING);
        // Nobody asked for the scan yet.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wake.notified())
                .await
                .is_err()
        );
        // One more is left to the inbox, and the scan is woken for it.
        sender.submit(report(MAX_PENDING));
        assert_eq!(sender.sending().len(), MAX_PENDING);
        assert!(!sender.sending().contains(&format!("report-{MAX_PENDING}")));
        tokio::time::timeout(Duration::from_secs(1), wake.notified())
            .await
            .expect("the scan woken");
        // A report already being sent is not claimed twice either.
        sender.submit(report(0));
        assert_eq!(sender.sending().len(), MAX_PENDING);
        // Room again, but reports wait in the inbox: a new one queues behind them.
        sender.sending().remove("report-1");
        sender.submit(report(MAX_PENDING + 1));
        assert_eq!(sender.sending().len(), MAX_PENDING - 1);
        // Once a scan has every due report in hand (none here), the pipeline takes new ones.
        assert_eq!(sender.send_due().await, 0);
        sender.submit(report(MAX_PENDING + 2));
        assert!(
            sender
                .sending()
                .contains(&format!("report-{}", MAX_PENDING + 2))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_short_retry_asked_for_is_taken_and_a_long_or_garbled_one_is_the_backoffs() {
        assert_eq!(
            retry_after(&refusal(Some("10"))),
            Some(Duration::from_millis(10))
        );
        assert_eq!(
            retry_after(&refusal(Some(" 250 "))),
            Some(Duration::from_millis(250))
        );
        assert_eq!(retry_after(&refusal(Some("251"))), None, "over QUICK_RETRY");
        assert_eq!(retry_after(&refusal(Some("-1"))), None);
        assert_eq!(retry_after(&refusal(Some("soon"))), None);
        assert_eq!(retry_after(&refusal(None)), None);
    }
}
