//! The relay's decisions for one leased batch, without I/O, so that every transition of the
//! dispatch state machine is unit-tested here:
//!
//! 1. [`plan`]: what a leased order needs — a first send to the partner its route picks (and an
//!    audit copy above the threshold), a re-send after a missed handover deadline, or no
//!    message at all (unroutable, acknowledged meanwhile, partner behind, resend budget spent).
//!    Whether a partner that missed the deadline is behind or gone is [`handover::judge`]'s
//!    call, from what the broker said about its consumer group ([`handover::Progress`]).
//! 2. The relay produces the planned messages (I/O, not here).
//! 3. [`settle`]: what the produce outcome means for the row — its next state, failure count,
//!    due time (backoff with jitter from the caller's random source), handover deadline, the
//!    attempt-log entry if one is kept, and an [`Outcome`] the relay turns into metrics and logs.
//!
//! The state machine (one row per order; `→` on a send's outcome):
//!
//! | leased as | plan | produced | next state |
//! | --- | --- | --- | --- |
//! | `PENDING`/`RETRYING` | no route | — | `UNROUTABLE` |
//! | `PENDING`/`RETRYING` | send | ok | `SENT` (handover deadline set) |
//! | `PENDING`/`RETRYING` | send | failed, budget left | `RETRYING` (backoff) |
//! | `PENDING`/`RETRYING` | send | failed, budget spent | `DEAD` |
//! | `SENT`, overdue | partner confirmed meanwhile | — | `ACKNOWLEDGED` |
//! | `SENT`, overdue | partner behind | — | `SENT` (deadline moved by one handover deadline, resends unchanged) |
//! | `SENT`, overdue | partner behind for the resend budget's worth of deadlines | — | `UNACKNOWLEDGED` |
//! | `SENT`, overdue | partner gone, resend budget spent | — | `UNACKNOWLEDGED` |
//! | `SENT`, overdue | re-send (partner gone) | ok | `SENT` (new deadline, resends + 1) |
//! | `SENT`, overdue | re-send | failed, budget left | `SENT` (deadline moved by backoff) |
//! | `SENT`, overdue | re-send | failed, budget spent | `UNACKNOWLEDGED` |
//!
//! "Partner behind": its record is still in the log, its live consumer group has not read it
//! yet; "gone" is everything else (see [`handover`]).
//!
//! Moves made outside the relay, each in one statement of `waybill_service_kit::db::dispatch_moves`
//! (its table says who makes them and why):
//!
//! | by | from | next state |
//! | --- | --- | --- |
//! | StatusIngest, a confirming report of the routed partner | any but `ACKNOWLEDGED` | `ACKNOWLEDGED` (deadline and lease cleared) |
//! | StatusIngest, a rejection by the routed partner | any | `PENDING` (partner, route, budget reset) |
//! | DispatchAdmin `RetryDispatches` ([`replay`]) | `RETRYING`, `DEAD`, `UNROUTABLE`, `UNACKNOWLEDGED`, not leased | `PENDING` (budget reset, due times spread over the replay's window) |
//!
//! What it decides is recorded as the types in [`super::record`].

pub mod handover;
pub mod replay;

use chrono::{DateTime, Utc};
use rand::Rng;
use uuid::Uuid;
use waybill_proto::v1::DispatchState;

use self::handover::{Handover, Progress};
pub use crate::domain::record::{AttemptLog, AuditCopy, BatchRecord, Fence, RowUpdate};
use crate::domain::{
    audit::AuditThresholds,
    backoff::BackoffPolicy,
    model::{LeasedOrder, PartnerRecord, SentPosition},
    routing::RoutingTable,
};

/// Which rows a batch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    /// `PENDING`/`RETRYING` rows due for a send.
    Due,
    /// `SENT` rows past their handover deadline.
    Overdue,
}

/// What one leased order needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No route matches (no message).
    Unroutable {
        /// No route is set up at all (the reason then says how to set them up).
        no_routes: bool,
    },
    /// A first send (or a retry of one) to `partner`.
    Send {
        /// The partner the route picks.
        partner: PartnerRecord,
        /// The route that matched.
        route_id: String,
        /// Whether an audit copy goes to the audit topic as well.
        audited: bool,
    },
    /// Overdue, but the partner confirmed receipt meanwhile (no message).
    Acknowledged,
    /// Overdue and out of re-sends, or its partner is gone (no message).
    Unacknowledged,
    /// Overdue, but the partner is behind: its live group has not read the order's record yet,
    /// or read it and has not confirmed it yet (no message; the deadline moves on).
    Behind {
        /// The partner.
        partner: PartnerRecord,
        /// Records its group reads before this one.
        ahead: i64,
    },
    /// Overdue and behind for as many handover deadlines as the resend budget allows (no
    /// message: a copy would land behind the first, or go to a partner that read the first).
    BehindTooLong {
        /// Where the record waits.
        position: SentPosition,
        /// Records its group reads before this one (0 once read).
        ahead: i64,
        /// Whether its group read it (and never confirmed it).
        read: bool,
        /// Handover deadlines spent (re-sends plus deadlines passed since the latest send).
        deadlines: i64,
    },
    /// Overdue: the same order to the same partner once more.
    Resend {
        /// The partner it was sent to.
        partner: PartnerRecord,
    },
}

/// Decides what `order` needs at `now`. Partners that refused the order (`REJECTED_BY_PARTNER`)
/// are skipped by routing; an overdue order's partner is behind or gone by `progress` (what the
/// broker said about the partners' consumer groups; empty for due batches).
pub fn plan(
    order: &LeasedOrder,
    kind: BatchKind,
    table: &RoutingTable,
    audit: &AuditThresholds,
    progress: &Progress,
    now: DateTime<Utc>,
) -> Plan {
    match kind {
        BatchKind::Due => match table.route_excluding(&order.ship_to, &order.rejected_partners) {
            None => Plan::Unroutable {
                no_routes: table.has_no_routes(),
            },
            Some(decision) => Plan::Send {
                partner: decision.partner.clone(),
                route_id: decision.route.id.clone(),
                audited: audit.is_audited(&order.currency_code, order.total_minor),
            },
        },
        BatchKind::Overdue => {
            if order.acknowledged {
                return Plan::Acknowledged;
            }
            // A partner no longer enrolled is gone for good.
            let Some(partner) = order.partner_id.as_deref().and_then(|id| table.partner(id)) else {
                return Plan::Unacknowledged;
            };
            match handover::judge(order, partner, progress, now) {
                Handover::Behind { ahead, .. } => Plan::Behind {
                    partner: partner.clone(),
                    ahead,
                },
                Handover::BehindTooLong {
                    position,
                    ahead,
                    read,
                    deadlines,
                } => Plan::BehindTooLong {
                    position,
                    ahead,
                    read,
                    deadlines,
                },
                Handover::Gone if order.resends < partner.resend_budget => Plan::Resend {
                    partner: partner.clone(),
                },
                Handover::Gone => Plan::Unacknowledged,
            }
        }
    }
}

/// How a planned order's messages fared at the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produced {
    /// The partner's copy (`Err` with the broker's error; `Ok` when no message was planned).
    pub partner: Result<(), String>,
    /// The audit copy, when one was planned.
    pub audit: Option<Result<(), String>>,
    /// Where the broker put the partner's copy (its delivery report), when it took it.
    pub position: Option<SentPosition>,
}

impl Produced {
    /// Every planned message acknowledged (or none planned).
    pub fn delivered() -> Self {
        Self {
            partner: Ok(()),
            audit: None,
            position: None,
        }
    }
}

/// The retry rules settling applies.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Failed sends (and failed re-sends) before the order is given up.
    pub attempt_budget: i32,
    /// When a failed send is tried again.
    pub backoff: BackoffPolicy,
}

impl RetryPolicy {
    /// When to try again after the `failures`-th failure in a row.
    pub fn retry_at(&self, failures: i32, now: DateTime<Utc>, rng: &mut impl Rng) -> DateTime<Utc> {
        let delay = self
            .backoff
            .delay(u32::try_from(failures).unwrap_or(u32::MAX), rng);
        now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX)
    }
}

/// What happened to one order, for the relay's metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No route: `UNROUTABLE` with `reason`.
    Unroutable {
        /// What operators read.
        reason: String,
    },
    /// Sent to its partner. `audit_deferred` holds the audit copy's error when that copy
    /// failed and waits in the audit outbox (the order is sent all the same).
    Sent {
        /// The partner.
        partner_id: String,
        /// The failed audit copy's error.
        audit_deferred: Option<String>,
    },
    /// A send failed and will be tried again.
    Retrying {
        /// Failures in a row, this one included.
        failures: i32,
        /// When.
        retry_at: DateTime<Utc>,
        /// The broker's error.
        error: String,
    },
    /// A send failed and the attempt budget is spent: `DEAD`.
    Dead {
        /// Failures in a row, this one included.
        failures: i32,
        /// The broker's error.
        error: String,
    },
    /// The partner confirmed receipt before the deadline scan: `ACKNOWLEDGED`.
    Acknowledged,
    /// The partner never confirmed receipt: `UNACKNOWLEDGED` with `reason`.
    Unacknowledged {
        /// What operators read.
        reason: String,
        /// Whether it came to this because re-sends failed (not because they ran out).
        after_failed_resend: bool,
    },
    /// Not re-sent at its handover deadline: the partner is behind, and the deadline moved on.
    HandoverExtended {
        /// The partner.
        partner_id: String,
        /// Records its group reads before this one.
        ahead: i64,
        /// The new deadline.
        due: DateTime<Utc>,
    },
    /// Re-sent after a missed handover deadline.
    Resent {
        /// The partner.
        partner_id: String,
        /// Re-sends so far, this one included.
        resends: i32,
    },
    /// A re-send failed and will be tried again (the order stays `SENT`).
    ResendRetrying {
        /// Failures in a row, this one included.
        failures: i32,
        /// When.
        retry_at: DateTime<Utc>,
        /// The broker's error.
        error: String,
    },
}

/// One order settled: what to record, and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The row's new values.
    pub update: RowUpdate,
    /// The attempt-log entry, when one is kept: every success and unroutable decision, and of
    /// a run of failures only the first and the last (the row keeps the count and the latest
    /// error).
    pub attempt: Option<AttemptLog>,
    /// `(order, partner)` when this was the order's first successful send.
    pub first_send: Option<(Uuid, String)>,
    /// When to try a failed audit copy again (it waits in the audit outbox).
    pub audit_retry_at: Option<DateTime<Utc>>,
    /// For metrics and logs.
    pub outcome: Outcome,
}

impl Settled {
    fn new(update: RowUpdate, outcome: Outcome) -> Self {
        Self {
            update,
            attempt: None,
            first_send: None,
            audit_retry_at: None,
            outcome,
        }
    }

    fn logged(mut self, attempt: AttemptLog) -> Self {
        self.attempt = Some(attempt);
        self
    }
}

/// Settles `order` after its planned messages were produced (`produced` is ignored for plans
/// without messages). `rng` draws the backoff jitter.
pub fn settle(
    order: &LeasedOrder,
    plan: &Plan,
    produced: &Produced,
    now: DateTime<Utc>,
    policy: &RetryPolicy,
    rng: &mut impl Rng,
) -> Settled {
    let keep = RowUpdate::keep(order, now);
    let failures = order.attempts.saturating_add(1);
    let spent = failures >= policy.attempt_budget;
    // Of a run of failures, the log keeps the first and the last.
    let log_failure = |partner: &PartnerRecord, error: &str| {
        (failures == 1 || spent).then(|| AttemptLog::of(order, error, &partner.id, &partner.topic))
    };
    match plan {
        Plan::Unroutable { no_routes } => {
            let reason = unroutable_reason(order, *no_routes);
            Settled::new(
                RowUpdate {
                    state: DispatchState::Unroutable,
                    last_error: Some(reason.clone()),
                    ..keep
                },
                Outcome::Unroutable {
                    reason: reason.clone(),
                },
            )
            .logged(AttemptLog::of(order, &reason, "", ""))
        }
        Plan::Send {
            partner,
            route_id,
            audited,
        } => match &produced.partner {
            Ok(()) => {
                let audit_error = match (&produced.audit, audited) {
                    (Some(Err(error)), true) => Some(error.clone()),
                    (None, true) => Some("audit copy was not produced".to_owned()),
                    _ => None,
                };
                let mut settled = Settled::new(
                    RowUpdate {
                        state: DispatchState::Sent,
                        attempts: 0,
                        last_error: Some(String::new()),
                        partner_id: Some(partner.id.clone()),
                        route_id: Some(route_id.clone()),
                        sent_at: Some(now),
                        ack_due_at: Some(now + partner.handover_deadline),
                        sent_position: produced.position,
                        ..keep
                    },
                    Outcome::Sent {
                        partner_id: partner.id.clone(),
                        audit_deferred: audit_error.clone(),
                    },
                );
                // A send that ends a run of failures closes that run's story in the log. A
                // first-try send (nearly all of them) is not logged: the row itself says where
                // and when it went (partner, route, sent_at), and an attempt-log row per order
                // cost the drain a quarter of its bookkeeping.
                if order.attempts > 0 {
                    settled =
                        settled.logged(AttemptLog::of(order, "", &partner.id, &partner.topic));
                }
                settled.first_send = Some((order.order_id, partner.id.clone()));
                settled.audit_retry_at = audit_error.map(|_| policy.retry_at(1, now, rng));
                settled
            }
            Err(error) => {
                let (state, next_attempt_at, outcome) = if spent {
                    let outcome = Outcome::Dead {
                        failures,
                        error: error.clone(),
                    };
                    (DispatchState::Dead, now, outcome)
                } else {
                    let retry_at = policy.retry_at(failures, now, rng);
                    let outcome = Outcome::Retrying {
                        failures,
                        retry_at,
                        error: error.clone(),
                    };
                    (DispatchState::Retrying, retry_at, outcome)
                };
                Settled {
                    attempt: log_failure(partner, error),
                    ..Settled::new(
                        RowUpdate {
                            state,
                            attempts: failures,
                            next_attempt_at,
                            last_error: Some(error.clone()),
                            partner_id: Some(partner.id.clone()),
                            route_id: Some(route_id.clone()),
                            ..keep
                        },
                        outcome,
                    )
                }
            }
        },
        Plan::Acknowledged => Settled::new(
            RowUpdate {
                state: DispatchState::Acknowledged,
                ack_due_at: None,
                ..keep
            },
            Outcome::Acknowledged,
        ),
        Plan::Unacknowledged => {
            let reason = format!(
                "partner {} did not confirm receipt after {} sends",
                order.partner_id.as_deref().unwrap_or("?"),
                order.resends.saturating_add(1)
            );
            unacknowledged(keep, reason)
        }
        // No send, no budget spent: the partner reads the order where it is.
        Plan::Behind { partner, ahead } => {
            let due = now + partner.handover_deadline;
            Settled::new(
                RowUpdate {
                    state: DispatchState::Sent,
                    ack_due_at: Some(due),
                    ..keep
                },
                Outcome::HandoverExtended {
                    partner_id: partner.id.clone(),
                    ahead: *ahead,
                    due,
                },
            )
        }
        Plan::BehindTooLong {
            position,
            ahead,
            read,
            deadlines,
        } => {
            let partner = order.partner_id.as_deref().unwrap_or("?");
            let (partition, offset) = (position.partition, position.offset);
            let reason = if *read {
                format!(
                    "partner {partner} did not confirm receipt: its consumers are alive and \
                     read the order (partition {partition}, offset {offset}) but have not \
                     confirmed it in {deadlines} handover deadlines"
                )
            } else {
                format!(
                    "partner {partner} did not confirm receipt: its consumers are alive but \
                     have not read the order in {deadlines} handover deadlines (partition \
                     {partition}, offset {offset}, {ahead} records before it)"
                )
            };
            unacknowledged(keep, reason)
        }
        Plan::Resend { partner } => match &produced.partner {
            Ok(()) => {
                let resends = order.resends.saturating_add(1);
                Settled::new(
                    RowUpdate {
                        state: DispatchState::Sent,
                        attempts: 0,
                        last_error: Some(String::new()),
                        resends,
                        sent_at: Some(now),
                        ack_due_at: Some(now + partner.handover_deadline),
                        sent_position: produced.position,
                        ..keep
                    },
                    Outcome::Resent {
                        partner_id: partner.id.clone(),
                        resends,
                    },
                )
                .logged(AttemptLog::of(order, "", &partner.id, &partner.topic))
            }
            // Failed re-sends back off like first sends, within the same budget; the order
            // stays SENT (the broker took it once) until the budget is spent.
            Err(error) => {
                let (update, outcome) = if spent {
                    let reason = format!(
                        "partner {} did not confirm receipt and {failures} re-sends failed, the latest: {error}",
                        partner.id
                    );
                    let update = RowUpdate {
                        state: DispatchState::Unacknowledged,
                        attempts: failures,
                        last_error: Some(reason.clone()),
                        ack_due_at: None,
                        ..keep
                    };
                    let outcome = Outcome::Unacknowledged {
                        reason,
                        after_failed_resend: true,
                    };
                    (update, outcome)
                } else {
                    let retry_at = policy.retry_at(failures, now, rng);
                    let update = RowUpdate {
                        state: DispatchState::Sent,
                        attempts: failures,
                        last_error: Some(error.clone()),
                        ack_due_at: Some(retry_at),
                        ..keep
                    };
                    let outcome = Outcome::ResendRetrying {
                        failures,
                        retry_at,
                        error: error.clone(),
                    };
                    (update, outcome)
                };
                Settled {
                    attempt: log_failure(partner, error),
                    ..Settled::new(update, outcome)
                }
            }
        },
    }
}

/// Why an order is unroutable, in words an operator can act on.
/// An order flagged `UNACKNOWLEDGED` at its handover deadline with `reason`, nothing sent.
fn unacknowledged(keep: RowUpdate, reason: String) -> Settled {
    Settled::new(
        RowUpdate {
            state: DispatchState::Unacknowledged,
            last_error: Some(reason.clone()),
            ack_due_at: None,
            ..keep
        },
        Outcome::Unacknowledged {
            reason,
            after_failed_resend: false,
        },
    )
}

fn unroutable_reason(order: &LeasedOrder, no_routes: bool) -> String {
    let mut reason = if no_routes {
        "no routes are set up: enroll partners and set routes (DispatchAdmin \
         EnrollPartner, SetRoute), then RetryDispatches sends this order"
            .to_owned()
    } else {
        format!(
            "no route matches country {:?}, region {:?}, postal code {:?}",
            order.ship_to.country_code, order.ship_to.region, order.ship_to.postal_code
        )
    };
    if !order.rejected_partners.is_empty() {
        reason.push_str(&format!(
            " (rejected by {}; their routes are skipped)",
            order.rejected_partners.join(", ")
        ));
    }
    reason
}

#[cfg(test)]
mod tests;
