//! Sending reports: the inbox's pending reports go to the StatusIngest address each order
//! carried, each attempt with a fresh token (a new `jti`) for the same report id, so a retry
//! is answered as a duplicate instead of refused as a replay. Transient failures are retried
//! with exponential backoff and jitter, kept in the inbox (so a restart resumes them);
//! `duplicate = true` is success; a refusal that can never pass is kept as `refused`.
//!
//! **A pipeline, not rounds.** A report the worker has just stored is handed over at once
//! ([`ReportSender::submit`]) and sent on its own task: nothing waits for a round or a
//! timer. Reports to the same StatusIngest that are ready while earlier calls are on the wire
//! leave together in its next `ReportStatuses` call, each with its own token and answer
//! ([`crate::batching`]). The inbox scan ([`ReportSender::run`]) is for everything else:
//! reports due for a retry, later statuses from the adapter, reports left by a restart or by
//! another instance sharing the inbox. A report being sent is in `sending` and is skipped by the scan, so it
//! is not sent twice at once (a second copy would be a harmless duplicate anyway). At most
//! [`MAX_SENDING`] reports are on the wire at once, at most
//! [`MAX_PENDING`](crate::domain::report::MAX_PENDING) held.
//!
//! What to do at each step — take a report onto the pipeline or leave it to the scan, what an
//! answer means, when a report is due again, how long the scan sleeps — is decided in
//! [`crate::domain::report`]; this module sends, stores and sleeps.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, Semaphore},
    task::JoinSet,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::Endpoint;
use tracing::{debug, error, info, warn};
use waybill_proto::v1::{ReportStatusRequest, status_ingest_client::StatusIngestClient};

use crate::{
    batching::Batcher,
    clock::SharedClock,
    domain::report::{
        Admission, BATCH, Failure, MAX_SENDING, QUICK_RETRIES, ReportRetry, Settle,
        TOKEN_LIFETIME_SECONDS, admit, quick_delay, scan_caught_up, scan_wait, settle,
        wake_scan_after_send,
    },
    inbox::{Inbox, StoredReport},
    metrics::ConnectorMetrics,
    observe::{Observer, Step},
    signing::ReportSigningKey,
};

/// Settings of the report sender.
#[derive(Debug, Clone)]
pub(crate) struct SenderSettings {
    pub audience: String,
    pub retry: ReportRetry,
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
    pub clock: SharedClock,
    /// One per StatusIngest address: the reports on their way there ([`Batcher`]).
    clients: Mutex<HashMap<String, Arc<Batcher>>>,
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
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        partner_id: String,
        inbox: Arc<dyn Inbox>,
        key: ReportSigningKey,
        settings: SenderSettings,
        metrics: Arc<ConnectorMetrics>,
        wake: Arc<Notify>,
        observer: Observer,
        clock: SharedClock,
    ) -> Self {
        Self {
            partner_id,
            inbox,
            key,
            settings,
            metrics,
            wake,
            observer,
            clock,
            clients: Mutex::new(HashMap::new()),
            sending: Mutex::new(HashSet::new()),
            permits: Semaphore::new(MAX_SENDING),
            overflowed: AtomicBool::new(false),
            tasks: TaskTracker::new(),
        }
    }

    /// Sends `report` now, on its own task (a report just stored by the worker), unless
    /// [`MAX_PENDING`](crate::domain::report::MAX_PENDING) are held already or earlier reports wait in the inbox: then it waits
    /// there for the scan, woken here.
    pub fn submit(self: &Arc<Self>, report: StoredReport) {
        {
            let mut sending = self.sending();
            let overflowed = self.overflowed.load(Ordering::Relaxed);
            match admit(
                sending.len(),
                overflowed,
                sending.contains(&report.report_id),
            ) {
                Admission::ToInbox => {
                    drop(sending);
                    self.overflowed.store(true, Ordering::Relaxed);
                    self.wake.notify_one();
                    return;
                }
                Admission::AlreadySending => return,
                Admission::Send => {
                    sending.insert(report.report_id.clone());
                }
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
                let delay = quick_delay(asked, quick);
                quick += 1;
                tokio::time::sleep(delay).await;
                report.attempts += 1;
            }
        }
        let pending = {
            let mut sending = self.sending();
            sending.remove(&report_id);
            sending.len()
        };
        // Reports wait in the inbox since the pipeline was full: the scan takes them now.
        if wake_scan_after_send(pending, self.overflowed.load(Ordering::Relaxed)) {
            self.wake.notify_one();
        }
    }

    /// Scans for due reports until `stop` is cancelled; woken by reports the pipeline does
    /// not carry (later statuses, redeliveries, failed attempts, an answer's reports scheduled
    /// for later), else by the earliest time a report is due (a retry, a scheduled report;
    /// at most every 5 s, so another instance's reports in a shared inbox are picked up too).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            if stop.is_cancelled() {
                return;
            }
            let sent = self.send_due().await;
            if sent > 0 {
                continue;
            }
            let wait = match self
                .inbox
                .next_report_due(&self.partner_id, self.clock.now())
                .await
            {
                Ok(next_due) => scan_wait(next_due, self.clock.now()),
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
            .due_reports(
                &self.partner_id,
                self.clock.now(),
                i64::try_from(BATCH).unwrap_or(i64::MAX),
            )
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
        if scan_caught_up(due.len()) {
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
    fn client(&self, reply_to: &str) -> Result<Arc<Batcher>, tonic::Status> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = clients.get(reply_to) {
            return Ok(Arc::clone(client));
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
        let client = Batcher::new(StatusIngestClient::new(endpoint.connect_lazy()));
        clients.insert(reply_to.to_owned(), Arc::clone(&client));
        Ok(client)
    }

    fn request(&self, report: &StoredReport) -> ReportStatusRequest {
        self.key.signed_request(
            &self.partner_id,
            report,
            &self.settings.audience,
            self.clock.now(),
            TOKEN_LIFETIME_SECONDS,
        )
    }

    /// One attempt, its outcome stored in the inbox. `Some(delay)` when StatusIngest asked for
    /// a retry that soon ([`RETRY_AFTER_MS`](waybill_proto::headers::RETRY_AFTER_MS), at most
    /// [`QUICK_RETRY`](crate::domain::report::QUICK_RETRY)): the caller makes it.
    async fn attempt(&self, report: StoredReport, quick_allowed: bool) -> Option<Duration> {
        let attempt = u32::try_from(report.attempts)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let result = match self.client(&report.reply_to) {
            Ok(client) => {
                let request = self.request(&report);
                self.observer.step(&report.order_id, Step::ReportSent);
                client
                    .report(request, report.traceparent.as_deref().unwrap_or_default())
                    .await
            }
            Err(status) => Err(status),
        };
        let answered = match &result {
            Ok(response) => Ok(response.duplicate),
            Err(status) => Err(Failure::of(status)),
        };
        let settled = settle(
            answered.as_ref().map(|duplicate| *duplicate),
            attempt,
            &self.settings.retry,
            quick_allowed,
            self.clock.now(),
            &mut rand::rng(),
        );
        let (order_id, report_id) = (&report.order_id, &report.report_id);
        let mut quick = None;
        let stored = match &settled {
            Settle::Confirmed { duplicate } => {
                self.observer.step(order_id, Step::ReportConfirmed);
                ConnectorMetrics::add(&self.metrics.reports_confirmed);
                if *duplicate {
                    ConnectorMetrics::add(&self.metrics.reports_duplicate);
                }
                debug!(%order_id, %report_id, status = %report.status, attempt, duplicate,
                    "report confirmed");
                self.inbox
                    .report_confirmed(&self.partner_id, report_id)
                    .await
            }
            Settle::Retry {
                next_attempt_at,
                delay,
                quick: asked,
                error,
            } => {
                ConnectorMetrics::add(&self.metrics.report_retries);
                quick = asked.then_some(*delay);
                let retry_in_ms = delay.as_millis() as u64;
                if attempt == 1 && !asked {
                    warn!(%order_id, %report_id, reply_to = %report.reply_to, attempt, %error,
                        retry_in_ms, "report failed, will retry");
                } else {
                    debug!(%order_id, %report_id, attempt, %error, retry_in_ms,
                        "report failed again");
                }
                let stored = self
                    .inbox
                    .report_failed(&self.partner_id, report_id, *next_attempt_at, error)
                    .await;
                if !asked {
                    // The scan times the retry.
                    self.wake.notify_one();
                }
                stored
            }
            Settle::Refused { error } => {
                ConnectorMetrics::add(&self.metrics.reports_refused);
                error!(%order_id, %report_id, status = %report.status, attempt, %error,
                    "report refused, kept in the inbox as refused");
                self.inbox
                    .report_refused(&self.partner_id, report_id, error)
                    .await
            }
        };
        if let Err(error) = stored {
            // The report stays pending and is sent again: a duplicate at worst.
            ConnectorMetrics::add(&self.metrics.inbox_errors);
            warn!(%order_id, %report_id, %error,
                "cannot record the report's outcome in the inbox");
            return None;
        } else if attempt > 1 && matches!(settled, Settle::Confirmed { .. }) {
            info!(%order_id, %report_id, attempt, "report landed after retries");
        }
        quick
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::Clock as _,
        domain::{backoff::Backoff, report::MAX_PENDING, test_clock},
    };

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
    async fn a_report_scheduled_for_later_is_sent_when_the_clock_reaches_it() {
        // Nobody listens there: each attempt fails at once and is kept for a retry.
        let reply_to = format!("http://{}", {
            let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            closed.local_addr().expect("addr")
        });
        let dir =
            std::env::temp_dir().join(format!("waybill-sdk-scheduled-{}", uuid::Uuid::new_v4()));
        let inbox = Arc::new(
            crate::inbox::SqlInbox::open_sqlite(dir.join("inbox.db"))
                .await
                .expect("inbox"),
        );
        let clock = test_clock();
        let sender = Arc::new(sender(inbox.clone(), Arc::new(Notify::new()), &clock));
        let shipped = StoredReport::pending(
            "o-1:later:0".to_owned(),
            "o-1".to_owned(),
            "SHIPPED",
            "T-1".to_owned(),
            String::new(),
            String::new(),
            false,
            clock.now(),
            reply_to,
            None,
        )
        .due_at(clock.now() + chrono::Duration::seconds(2));
        inbox.add_report("acme", &shipped).await.expect("stored");
        assert_eq!(sender.send_due().await, 0, "not before its time");
        let next = inbox
            .next_report_due("acme", clock.now())
            .await
            .expect("read");
        assert_eq!(
            scan_wait(next, clock.now()),
            Duration::from_secs(2),
            "the scan sleeps until it is due"
        );
        clock.advance(chrono::Duration::milliseconds(1999));
        assert_eq!(sender.send_due().await, 0);
        clock.advance(chrono::Duration::milliseconds(1));
        assert_eq!(sender.send_due().await, 1, "sent when due");
        let kept = inbox.reports_of("acme", "o-1").await.expect("read");
        assert_eq!(kept[0].attempts, 1, "failed, kept for a retry");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn sender(
        inbox: Arc<dyn Inbox>,
        wake: Arc<Notify>,
        clock: &crate::clock::ManualClock,
    ) -> ReportSender {
        let key = ReportSigningKey::from_key(
            waybill_token::SigningKey::from_bytes(&[7; 32]),
            "acme-test",
        )
        .expect("key");
        ReportSender::new(
            "acme".to_owned(),
            inbox,
            key,
            SenderSettings {
                audience: "waybill-test".to_owned(),
                retry: ReportRetry {
                    attempts: 3,
                    backoff: Backoff {
                        base: Duration::from_millis(100),
                        cap: Duration::from_secs(1),
                    },
                },
                rpc_timeout: Duration::from_secs(600),
                tls: None,
            },
            Arc::new(ConnectorMetrics::default()),
            wake,
            Observer::default(),
            Arc::new(clock.clone()),
        )
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
        let wake = Arc::new(Notify::new());
        let clock = test_clock();
        let sender = Arc::new(sender(Arc::new(inbox), wake.clone(), &clock));
        let report = |n: usize| {
            StoredReport::pending(
                format!("report-{n}"),
                uuid::Uuid::new_v4().to_string(),
                "RECEIVED_BY_PARTNER",
                format!("T{n}"),
                String::new(),
                String::new(),
                false,
                clock.now(),
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
}
