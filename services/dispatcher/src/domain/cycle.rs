//! The relay's decisions for one leased batch, without I/O, so that every transition of the
//! dispatch state machine is unit-tested here:
//!
//! 1. [`plan`]: what a leased order needs — a first send to the partner its route picks (and an
//!    audit copy above the threshold), a re-send after a missed handover deadline, or no
//!    message at all (unroutable, acknowledged meanwhile, resend budget spent).
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
//! | `SENT`, overdue | resend budget spent | — | `UNACKNOWLEDGED` |
//! | `SENT`, overdue | re-send | ok | `SENT` (new deadline, resends + 1) |
//! | `SENT`, overdue | re-send | failed, budget left | `SENT` (deadline moved by backoff) |
//! | `SENT`, overdue | re-send | failed, budget spent | `UNACKNOWLEDGED` |
//!
//! The types the store records ([`RowUpdate`], [`AttemptLog`], [`AuditCopy`], [`BatchRecord`],
//! under a [`Fence`]) are defined here, with the decisions that make them.

use chrono::{DateTime, Utc};
use rand::Rng;
use uuid::Uuid;
use waybill_proto::v1::DispatchState;

use crate::domain::{
    audit::AuditThresholds,
    backoff::BackoffPolicy,
    model::{LeasedOrder, PartnerRecord},
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

/// The fence: bookkeeping applies only to rows still leased by this owner with this batch id.
#[derive(Debug, Clone)]
pub struct Fence {
    /// Lease owner.
    pub owner: String,
    /// Batch id.
    pub batch_id: Uuid,
}

/// The new values of one leased dispatch row, computed from the leased snapshot (which the
/// fence guarantees is still current).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowUpdate {
    /// The row.
    pub order_id: Uuid,
    /// New state.
    pub state: DispatchState,
    /// New failure count.
    pub attempts: i32,
    /// New due time.
    pub next_attempt_at: DateTime<Utc>,
    /// New last error (`None` keeps the old one).
    pub last_error: Option<String>,
    /// Partner routed to (`None` keeps the old one).
    pub partner_id: Option<String>,
    /// Route that matched (`None` keeps the old one).
    pub route_id: Option<String>,
    /// New resend count.
    pub resends: i32,
    /// New sent time (`None` keeps the old one).
    pub sent_at: Option<DateTime<Utc>>,
    /// New handover deadline (`None` clears it).
    pub ack_due_at: Option<DateTime<Utc>>,
}

impl RowUpdate {
    /// An update that leaves the row as it was leased, due now (fields are then overridden).
    pub fn keep(order: &LeasedOrder, now: DateTime<Utc>) -> Self {
        Self {
            order_id: order.order_id,
            state: order.state,
            attempts: order.attempts,
            next_attempt_at: now,
            last_error: None,
            partner_id: None,
            route_id: None,
            resends: order.resends,
            sent_at: None,
            ack_due_at: None,
        }
    }
}

/// One attempt-log entry to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptLog {
    /// The order.
    pub order_id: Uuid,
    /// Attempt number.
    pub attempt: i32,
    /// Empty on success.
    pub error: String,
    /// Partner (may be empty).
    pub partner_id: String,
    /// Topic (may be empty).
    pub topic: String,
}

impl AttemptLog {
    /// The entry for `order`'s current attempt (sends and re-sends counted together).
    pub fn of(order: &LeasedOrder, error: &str, partner_id: &str, topic: &str) -> Self {
        Self {
            order_id: order.order_id,
            attempt: order
                .attempts
                .saturating_add(order.resends)
                .saturating_add(1),
            error: error.to_owned(),
            partner_id: partner_id.to_owned(),
            topic: topic.to_owned(),
        }
    }
}

/// An audit copy waiting in the audit outbox, ready to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCopy {
    /// The order (the message key).
    pub order_id: Uuid,
    /// The audit topic.
    pub topic: String,
    /// The encoded message.
    pub payload: Vec<u8>,
    /// Header name and value pairs.
    pub headers: Vec<(String, String)>,
    /// Failed tries so far.
    pub attempts: i32,
    /// The latest failure.
    pub last_error: String,
    /// When to try again.
    pub due_at: DateTime<Utc>,
}

/// Everything learned from one batch, recorded together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchRecord {
    /// New values of dispatch rows.
    pub updates: Vec<RowUpdate>,
    /// Orders whose first successful send this was: `(order, partner)`; each gets a
    /// `SENT_TO_PARTNER` event (unless its history is already past `PLACED`) and its partner.
    pub first_sends: Vec<(Uuid, String)>,
    /// Attempt-log entries.
    pub attempts: Vec<AttemptLog>,
    /// Audit copies that failed while their partner copy went out: kept in the audit outbox.
    pub audit_copies: Vec<AuditCopy>,
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
    /// Overdue: the same order to the same partner once more.
    Resend {
        /// The partner it was sent to.
        partner: PartnerRecord,
    },
}

/// Decides what `order` needs. Partners that refused the order (`REJECTED_BY_PARTNER`) are
/// skipped by routing.
pub fn plan(
    order: &LeasedOrder,
    kind: BatchKind,
    table: &RoutingTable,
    audit: &AuditThresholds,
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
            let partner = order.partner_id.as_deref().and_then(|id| table.partner(id));
            match partner {
                _ if order.acknowledged => Plan::Acknowledged,
                Some(partner) if order.resends < partner.resend_budget => Plan::Resend {
                    partner: partner.clone(),
                },
                _ => Plan::Unacknowledged,
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
}

impl Produced {
    /// Every planned message acknowledged (or none planned).
    pub fn delivered() -> Self {
        Self {
            partner: Ok(()),
            audit: None,
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
                        ..keep
                    },
                    Outcome::Sent {
                        partner_id: partner.id.clone(),
                        audit_deferred: audit_error.clone(),
                    },
                )
                .logged(AttemptLog::of(order, "", &partner.id, &partner.topic));
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
mod tests {
    use chrono::{Duration, TimeZone};
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;
    use crate::domain::{
        backoff::Jitter,
        model::{RouteRecord, ShipTo},
    };

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0)
            .single()
            .expect("a valid instant")
    }

    fn partner(id: &str) -> PartnerRecord {
        PartnerRecord {
            id: id.to_owned(),
            display_name: id.to_owned(),
            enabled: true,
            handover_deadline: Duration::minutes(10),
            resend_budget: 2,
            topic: format!("waybill.partner.{id}"),
            created_at: now(),
            updated_at: now(),
        }
    }

    fn route(id: &str, partner: &str, country: &str) -> RouteRecord {
        RouteRecord {
            id: id.to_owned(),
            partner_id: partner.to_owned(),
            country_code: country.to_owned(),
            region: String::new(),
            postal_prefix: String::new(),
            priority: 10,
            enabled: true,
        }
    }

    /// Routes DE to `a`, then `b`; US to `b`.
    fn table() -> RoutingTable {
        RoutingTable::new(
            vec![partner("a"), partner("b")],
            vec![
                route("de-a", "a", "DE"),
                RouteRecord {
                    priority: 20,
                    ..route("de-b", "b", "DE")
                },
                route("us-b", "b", "US"),
            ],
        )
    }

    fn order(country: &str) -> LeasedOrder {
        LeasedOrder {
            order_id: Uuid::from_u128(7),
            state: DispatchState::Pending,
            attempts: 0,
            resends: 0,
            partner_id: None,
            acknowledged: false,
            rejected_partners: Vec::new(),
            traceparent: String::new(),
            tracestate: String::new(),
            placed_at: now(),
            customer_id: "c1".to_owned(),
            customer_name: "Ada".to_owned(),
            customer_email: "ada@example.com".to_owned(),
            customer_phone: String::new(),
            ship_to: ShipTo {
                country_code: country.to_owned(),
                postal_code: "10115".to_owned(),
                ..ShipTo::default()
            },
            currency_code: "EUR".to_owned(),
            total_minor: 5_000,
            region: "local".to_owned(),
            lines: Vec::new(),
        }
    }

    /// A `SENT` order past its deadline at partner `a`.
    fn overdue(resends: i32, attempts: i32) -> LeasedOrder {
        LeasedOrder {
            state: DispatchState::Sent,
            partner_id: Some("a".to_owned()),
            resends,
            attempts,
            ..order("DE")
        }
    }

    fn audit() -> AuditThresholds {
        AuditThresholds::parse(&["EUR=100000"]).expect("valid thresholds")
    }

    /// Budget 3, no jitter: retry delays are exactly 5 s, 10 s, ...
    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempt_budget: 3,
            backoff: BackoffPolicy {
                base: std::time::Duration::from_secs(5),
                cap: std::time::Duration::from_secs(60),
                jitter: Jitter::None,
            },
        }
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(42)
    }

    fn ok() -> Produced {
        Produced::delivered()
    }

    fn failed(error: &str) -> Produced {
        Produced {
            partner: Err(error.to_owned()),
            audit: None,
        }
    }

    fn settle_one(order: &LeasedOrder, plan: &Plan, produced: &Produced) -> Settled {
        settle(order, plan, produced, now(), &policy(), &mut rng())
    }

    #[test]
    fn a_due_order_is_planned_to_its_first_matching_partner_skipping_rejections() {
        let plan_for = |order: &LeasedOrder| plan(order, BatchKind::Due, &table(), &audit());
        let Plan::Send {
            partner,
            route_id,
            audited,
        } = plan_for(&order("DE"))
        else {
            panic!("a route matches DE")
        };
        assert_eq!(
            (partner.id.as_str(), route_id.as_str(), audited),
            ("a", "de-a", false)
        );

        let rejected_by_a = LeasedOrder {
            rejected_partners: vec!["a".to_owned()],
            ..order("DE")
        };
        assert!(
            matches!(plan_for(&rejected_by_a), Plan::Send { partner, .. } if partner.id == "b")
        );

        let rejected_by_both = LeasedOrder {
            rejected_partners: vec!["a".to_owned(), "b".to_owned()],
            ..order("DE")
        };
        assert_eq!(
            plan_for(&rejected_by_both),
            Plan::Unroutable { no_routes: false }
        );
        assert_eq!(
            plan_for(&order("JP")),
            Plan::Unroutable { no_routes: false }
        );

        let empty = RoutingTable::new(Vec::new(), Vec::new());
        assert_eq!(
            plan(&order("DE"), BatchKind::Due, &empty, &audit()),
            Plan::Unroutable { no_routes: true }
        );
    }

    #[test]
    fn orders_at_or_above_the_threshold_get_an_audit_copy() {
        let rich = LeasedOrder {
            total_minor: 100_000,
            ..order("DE")
        };
        assert!(matches!(
            plan(&rich, BatchKind::Due, &table(), &audit()),
            Plan::Send { audited: true, .. }
        ));
    }

    #[test]
    fn an_overdue_order_is_acknowledged_resent_or_given_up() {
        let plan_for = |order: &LeasedOrder| plan(order, BatchKind::Overdue, &table(), &audit());
        let confirmed = LeasedOrder {
            acknowledged: true,
            ..overdue(0, 0)
        };
        assert_eq!(plan_for(&confirmed), Plan::Acknowledged);
        assert_eq!(
            plan_for(&overdue(1, 0)),
            Plan::Resend {
                partner: partner("a")
            }
        );
        // Resend budget 2: after two re-sends it is not sent again.
        assert_eq!(plan_for(&overdue(2, 0)), Plan::Unacknowledged);
        let partner_gone = LeasedOrder {
            partner_id: Some("gone".to_owned()),
            ..overdue(0, 0)
        };
        assert_eq!(plan_for(&partner_gone), Plan::Unacknowledged);
    }

    #[test]
    fn unroutable_says_why_and_logs_the_decision() {
        let rejected = LeasedOrder {
            rejected_partners: vec!["a".to_owned()],
            ..order("JP")
        };
        let settled = settle_one(&rejected, &Plan::Unroutable { no_routes: false }, &ok());
        assert_eq!(settled.update.state, DispatchState::Unroutable);
        let reason = settled.update.last_error.clone().expect("a reason");
        assert!(
            reason.contains("no route matches country \"JP\""),
            "{reason}"
        );
        assert!(reason.contains("rejected by a"), "{reason}");
        assert_eq!(settled.attempt.map(|a| a.error), Some(reason.clone()));
        assert_eq!(settled.outcome, Outcome::Unroutable { reason });

        let none = settle_one(&order("DE"), &Plan::Unroutable { no_routes: true }, &ok());
        let reason = none.update.last_error.expect("a reason");
        assert!(reason.contains("EnrollPartner, SetRoute"), "{reason}");
        assert!(reason.contains("RetryDispatches"), "{reason}");
    }

    fn send_plan(audited: bool) -> Plan {
        Plan::Send {
            partner: partner("a"),
            route_id: "de-a".to_owned(),
            audited,
        }
    }

    #[test]
    fn a_successful_send_is_sent_with_its_handover_deadline() {
        let retrying = LeasedOrder {
            state: DispatchState::Retrying,
            attempts: 2,
            ..order("DE")
        };
        let settled = settle_one(&retrying, &send_plan(false), &ok());
        assert_eq!(
            settled.update,
            RowUpdate {
                order_id: retrying.order_id,
                state: DispatchState::Sent,
                attempts: 0,
                next_attempt_at: now(),
                last_error: Some(String::new()),
                partner_id: Some("a".to_owned()),
                route_id: Some("de-a".to_owned()),
                resends: 0,
                sent_at: Some(now()),
                ack_due_at: Some(now() + Duration::minutes(10)),
            }
        );
        assert_eq!(
            settled.first_send,
            Some((retrying.order_id, "a".to_owned()))
        );
        let attempt = settled.attempt.expect("successes are logged");
        assert_eq!((attempt.attempt, attempt.error.as_str()), (3, ""));
        assert_eq!(attempt.topic, "waybill.partner.a");
        assert_eq!(settled.audit_retry_at, None);
    }

    #[test]
    fn a_failed_audit_copy_waits_in_the_audit_outbox_and_the_order_is_sent() {
        let produced = Produced {
            partner: Ok(()),
            audit: Some(Err("audit topic down".to_owned())),
        };
        let settled = settle_one(&order("DE"), &send_plan(true), &produced);
        assert_eq!(settled.update.state, DispatchState::Sent);
        assert_eq!(settled.audit_retry_at, Some(now() + Duration::seconds(5)));
        assert_eq!(
            settled.outcome,
            Outcome::Sent {
                partner_id: "a".to_owned(),
                audit_deferred: Some("audit topic down".to_owned()),
            }
        );
        let delivered = Produced {
            partner: Ok(()),
            audit: Some(Ok(())),
        };
        assert_eq!(
            settle_one(&order("DE"), &send_plan(true), &delivered).audit_retry_at,
            None
        );
    }

    #[test]
    fn a_failed_send_retries_with_backoff_and_logs_only_the_first_failure_of_a_run() {
        let first = settle_one(&order("DE"), &send_plan(false), &failed("broker down"));
        assert_eq!(first.update.state, DispatchState::Retrying);
        assert_eq!(first.update.attempts, 1);
        assert_eq!(first.update.next_attempt_at, now() + Duration::seconds(5));
        assert_eq!(first.update.last_error.as_deref(), Some("broker down"));
        assert_eq!(first.update.partner_id.as_deref(), Some("a"));
        assert_eq!(first.first_send, None);
        assert_eq!(
            first.attempt.map(|a| a.error),
            Some("broker down".to_owned())
        );
        assert!(matches!(
            first.outcome,
            Outcome::Retrying { failures: 1, .. }
        ));

        let second = settle_one(
            &LeasedOrder {
                state: DispatchState::Retrying,
                attempts: 1,
                ..order("DE")
            },
            &send_plan(false),
            &failed("still down"),
        );
        assert_eq!(second.update.state, DispatchState::Retrying);
        assert_eq!(second.update.next_attempt_at, now() + Duration::seconds(10));
        assert_eq!(
            second.attempt, None,
            "failures between the first and last are not logged"
        );
    }

    #[test]
    fn the_last_failure_within_the_budget_makes_the_order_dead() {
        let settled = settle_one(
            &LeasedOrder {
                state: DispatchState::Retrying,
                attempts: 2,
                ..order("DE")
            },
            &send_plan(false),
            &failed("gone for good"),
        );
        assert_eq!(settled.update.state, DispatchState::Dead);
        assert_eq!(settled.update.attempts, 3);
        assert_eq!(settled.update.last_error.as_deref(), Some("gone for good"));
        assert_eq!(
            settled.attempt.map(|a| a.attempt),
            Some(3),
            "the last failure is logged"
        );
        assert_eq!(
            settled.outcome,
            Outcome::Dead {
                failures: 3,
                error: "gone for good".to_owned()
            }
        );
    }

    #[test]
    fn jitter_comes_from_the_callers_random_source() {
        let jittered = RetryPolicy {
            backoff: BackoffPolicy {
                jitter: Jitter::Full,
                ..policy().backoff
            },
            ..policy()
        };
        let at = |seed: u64| {
            settle(
                &order("DE"),
                &send_plan(false),
                &failed("down"),
                now(),
                &jittered,
                &mut StdRng::seed_from_u64(seed),
            )
            .update
            .next_attempt_at
        };
        assert_eq!(at(1), at(1), "the same seed, the same schedule");
        for seed in 0..50 {
            let delay = at(seed) - now();
            assert!(
                delay >= Duration::zero() && delay <= Duration::seconds(5),
                "{delay}"
            );
        }
    }

    #[test]
    fn an_order_confirmed_meanwhile_is_acknowledged_and_its_deadline_cleared() {
        let settled = settle_one(&overdue(0, 0), &Plan::Acknowledged, &ok());
        assert_eq!(settled.update.state, DispatchState::Acknowledged);
        assert_eq!(settled.update.ack_due_at, None);
        assert_eq!(settled.attempt, None);
        assert_eq!(settled.outcome, Outcome::Acknowledged);
    }

    #[test]
    fn an_order_out_of_resends_is_unacknowledged() {
        let settled = settle_one(&overdue(2, 0), &Plan::Unacknowledged, &ok());
        assert_eq!(settled.update.state, DispatchState::Unacknowledged);
        assert_eq!(settled.update.ack_due_at, None);
        assert_eq!(
            settled.update.last_error.as_deref(),
            Some("partner a did not confirm receipt after 3 sends")
        );
    }

    #[test]
    fn a_resend_renews_the_deadline_and_counts() {
        let plan = Plan::Resend {
            partner: partner("a"),
        };
        let settled = settle_one(&overdue(1, 1), &plan, &ok());
        assert_eq!(settled.update.state, DispatchState::Sent);
        assert_eq!(settled.update.resends, 2);
        assert_eq!(settled.update.attempts, 0);
        assert_eq!(
            settled.update.ack_due_at,
            Some(now() + Duration::minutes(10))
        );
        assert_eq!(settled.update.sent_at, Some(now()));
        assert_eq!(
            settled.first_send, None,
            "only the first send appends SENT_TO_PARTNER"
        );
        assert!(settled.attempt.is_some());
        assert_eq!(
            settled.outcome,
            Outcome::Resent {
                partner_id: "a".to_owned(),
                resends: 2
            }
        );
    }

    #[test]
    fn a_failed_resend_backs_off_as_sent_then_gives_up_as_unacknowledged() {
        let plan = Plan::Resend {
            partner: partner("a"),
        };
        let first = settle_one(&overdue(1, 0), &plan, &failed("timed out"));
        assert_eq!(first.update.state, DispatchState::Sent);
        assert_eq!(first.update.attempts, 1);
        assert_eq!(first.update.resends, 1, "a failed re-send is not a re-send");
        assert_eq!(first.update.ack_due_at, Some(now() + Duration::seconds(5)));
        assert!(first.attempt.is_some());
        assert!(matches!(
            first.outcome,
            Outcome::ResendRetrying { failures: 1, .. }
        ));

        let middle = settle_one(&overdue(1, 1), &plan, &failed("timed out"));
        assert_eq!(middle.attempt, None);

        let last = settle_one(&overdue(1, 2), &plan, &failed("timed out"));
        assert_eq!(last.update.state, DispatchState::Unacknowledged);
        assert_eq!(last.update.ack_due_at, None);
        assert_eq!(
            last.update.last_error.as_deref(),
            Some("partner a did not confirm receipt and 3 re-sends failed, the latest: timed out")
        );
        assert!(last.attempt.is_some());
        assert!(matches!(
            last.outcome,
            Outcome::Unacknowledged {
                after_failed_resend: true,
                ..
            }
        ));
    }
}
