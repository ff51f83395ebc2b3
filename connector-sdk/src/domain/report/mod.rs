//! The report sender's decisions, without I/O, so that every transition is unit-tested here
//! (`tests.rs`, one test per row, on a fixed clock). The sender gathers the inputs — how many
//! reports it holds, StatusIngest's answer, the next due time the inbox names — and carries the
//! decision out.
//!
//! | report | what happened | decision |
//! | --- | --- | --- |
//! | just stored by the worker | the pipeline holds [`MAX_PENDING`] reports, or reports wait in the inbox since it did | [`Admission::ToInbox`]: it waits there for the scan, which is woken |
//! | just stored by the worker | it is being sent already | [`Admission::AlreadySending`] |
//! | just stored by the worker | room, nothing waiting | [`Admission::Send`]: on its own task, now |
//! | an attempt | StatusIngest took it (`duplicate` or not) | [`Settle::Confirmed`] |
//! | an attempt | refused for good ([`classify`]: the order is not this partner's, the request breaks a rule) | [`Settle::Refused`]: kept as refused |
//! | an attempt | a failure that may pass (unavailable, a token refused: a key not enrolled yet, a clock skewed, a replay), attempt budget spent | [`Settle::Refused`] |
//! | an attempt | a failure that may pass, StatusIngest asked for a retry within [`QUICK_RETRY`], quick retries left | [`Settle::Retry`] `quick`: the pipeline retries it itself after that delay |
//! | an attempt | a failure that may pass, otherwise | [`Settle::Retry`]: due again after the backoff, the scan times it |
//! | a quick retry | the n-th in a row | waits the delay asked × 2ⁿ, at most [`QUICK_RETRY`] ([`quick_delay`]) |
//! | a send finished | room again, and reports wait in the inbox | [`wake_scan_after_send`]: the scan takes them |
//! | a scan | it read fewer than a batch: every due report is in hand | [`scan_caught_up`]: new reports take the pipeline again |
//! | the scan, idle | the next report is due at `t` (a retry, or one an answer scheduled for later; those due already are on the wire) | [`scan_wait`]: sleeps until `t`, at most [`SCAN_AT_MOST_EVERY`] |
//!
//! Each attempt carries a fresh token issued at the clock's `now` for [`TOKEN_LIFETIME_SECONDS`]
//! (same report id: a retry is a duplicate, not a replay).

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use tonic::Code;
use waybill_proto::headers::RETRY_AFTER_MS;

use crate::domain::{
    backoff::Backoff,
    report_outcome::{ReportOutcome, classify},
};

/// How long each report token is valid (StatusIngest allows at most 300 s).
pub const TOKEN_LIFETIME_SECONDS: i64 = 120;
/// Reports read per scan.
pub const BATCH: usize = 256;
/// Reports being sent at once (on the wire, or queued for the next call to their
/// StatusIngest). They leave in at most two calls at a time per StatusIngest, each carrying up
/// to 128 of them (`ReportStatuses`), far below StatusIngest's bounds on calls in flight per
/// connection (256) and over all connections (1,024); a StatusIngest that sheds calls anyway
/// (many connectors at once) answers `RESOURCE_EXHAUSTED`, retried after the backoff.
pub const MAX_SENDING: usize = 128;
/// Reports the pipeline holds in memory at once (on the wire or waiting for a place there).
/// Past it a stored report stays in the inbox, where the scan finds it: when StatusIngest is
/// slower than the partner, the queue grows on disk, not in memory (measured before the bound:
/// 146 MiB with reports half a minute behind). Until the scan has caught up, later reports
/// queue behind those in the inbox rather than overtaking them.
pub const MAX_PENDING: usize = 8 * MAX_SENDING;
/// The longest retry delay StatusIngest may ask for and get: a longer one is the backoff's.
pub const QUICK_RETRY: Duration = Duration::from_millis(250);
/// Retries made at StatusIngest's request in a row before the backoff takes over.
pub const QUICK_RETRIES: u32 = 8;
/// The longest the scan sleeps (another instance sharing the inbox may have left reports).
pub const SCAN_AT_MOST_EVERY: Duration = Duration::from_secs(5);

/// Whether the pipeline takes a report the worker has just stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it now, on its own task.
    Send,
    /// It is being sent already.
    AlreadySending,
    /// It waits in the inbox for the scan (wake the scan; reports overflow until a scan has
    /// caught up).
    ToInbox,
}

/// Decides for a report just stored, given the reports the pipeline holds (`pending`),
/// whether reports wait in the inbox since it overflowed, and whether this one is being sent.
pub fn admit(pending: usize, overflowed: bool, already_sending: bool) -> Admission {
    if pending >= MAX_PENDING || overflowed {
        Admission::ToInbox
    } else if already_sending {
        Admission::AlreadySending
    } else {
        Admission::Send
    }
}

/// Whether to wake the scan after a send ended, leaving `pending` reports in the pipeline:
/// when there is room again and reports wait in the inbox.
pub fn wake_scan_after_send(pending: usize, overflowed: bool) -> bool {
    pending < MAX_PENDING && overflowed
}

/// Whether a scan that read `due` reports has every due report in hand (fewer than a batch),
/// so that whatever the pipeline left to the inbox is caught up.
pub fn scan_caught_up(due: usize) -> bool {
    due < BATCH
}

/// How long the idle scan sleeps at `now` when the next report is due at `next_due`: until
/// then, at most [`SCAN_AT_MOST_EVERY`]. A report due already is being sent by the pipeline
/// (the scan sent nothing), which wakes the scan if it fails.
pub fn scan_wait(next_due: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Duration {
    match next_due {
        Some(due) if due > now => (due - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(SCAN_AT_MOST_EVERY),
        _ => SCAN_AT_MOST_EVERY,
    }
}

/// The wait before quick retry number `quick` (0 for the first) when StatusIngest asked for
/// `asked`: doubling, at most [`QUICK_RETRY`].
pub fn quick_delay(asked: Duration, quick: u32) -> Duration {
    asked.saturating_mul(1 << quick.min(16)).min(QUICK_RETRY)
}

/// The retry delay StatusIngest asked for in `status` ([`RETRY_AFTER_MS`]), if any and at
/// most [`QUICK_RETRY`].
pub fn retry_after(status: &tonic::Status) -> Option<Duration> {
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

/// A failed attempt, as StatusIngest (or the client) answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The gRPC status code.
    pub code: Code,
    /// Its message.
    pub message: String,
    /// The retry delay StatusIngest asked for ([`retry_after`]).
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// The failure `status` says.
    pub fn of(status: &tonic::Status) -> Self {
        Self {
            code: status.code(),
            message: status.message().to_owned(),
            retry_after: retry_after(status),
        }
    }

    fn error(&self) -> String {
        format!("{:?}: {}", self.code, self.message)
    }
}

/// Attempts per report and the backoff between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportRetry {
    /// Attempts before a report that keeps failing is kept as refused.
    pub attempts: u32,
    /// The wait before each retry the scan makes.
    pub backoff: Backoff,
}

/// What an attempt's outcome means for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// StatusIngest took it: confirmed.
    Confirmed {
        /// StatusIngest had it already.
        duplicate: bool,
    },
    /// Pending, due again at `next_attempt_at`.
    Retry {
        /// When the report is due again.
        next_attempt_at: DateTime<Utc>,
        /// From now.
        delay: Duration,
        /// Whether the pipeline makes the retry itself (StatusIngest asked for it within
        /// moments); otherwise the scan does, at `next_attempt_at`.
        quick: bool,
        /// What failed (`Code: message`).
        error: String,
    },
    /// Kept as refused: resending cannot succeed, or the attempt budget is spent.
    Refused {
        /// What failed (`Code: message`).
        error: String,
    },
}

/// Decides after attempt number `attempt` (1 for the first) ended at `now` with `result`
/// (`Ok(duplicate)` when StatusIngest took it); `quick_allowed` while quick retries are left.
/// `rng` draws the backoff's jitter.
pub fn settle(
    result: Result<bool, &Failure>,
    attempt: u32,
    retry: &ReportRetry,
    quick_allowed: bool,
    now: DateTime<Utc>,
    rng: &mut impl Rng,
) -> Settle {
    let failure = match result {
        Ok(duplicate) => return Settle::Confirmed { duplicate },
        Err(failure) => failure,
    };
    match classify(failure.code) {
        ReportOutcome::Retry if attempt < retry.attempts => {
            let quick = failure.retry_after.filter(|_| quick_allowed);
            let delay = quick.unwrap_or_else(|| retry.backoff.delay(attempt, rng));
            Settle::Retry {
                next_attempt_at: now
                    + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero()),
                delay,
                quick: quick.is_some(),
                error: failure.error(),
            }
        }
        // An OK code never comes as a failure; were it to, nothing was confirmed.
        ReportOutcome::Retry | ReportOutcome::Refused | ReportOutcome::Confirmed => {
            Settle::Refused {
                error: failure.error(),
            }
        }
    }
}

#[cfg(test)]
mod tests;
