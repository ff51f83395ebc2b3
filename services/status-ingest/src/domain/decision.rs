//! What an authenticated report does, decided from a snapshot of the order taken inside the
//! report's transaction (the order row locked): both stores gather the same [`OrderSnapshot`]
//! and carry out the same [`Decision`].

use waybill_proto::v1::{DispatchState, OrderStatus};

/// The order as the report's transaction sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderSnapshot {
    /// The order's current status (`orders.status`).
    pub status: OrderStatus,
    /// The partner the dispatch row is routed to now (`dispatch.partner_id`), if any.
    pub routed_partner: Option<String>,
    /// The dispatch row's state.
    pub dispatch_state: Option<DispatchState>,
    /// The reporting partner refused this order earlier (a `dispatch_rejections` row).
    pub rejected_by_reporter: bool,
    /// An earlier report with the same `(partner, report id)`: `Some(true)` for this order,
    /// `Some(false)` for another order.
    pub earlier_report_same_order: Option<bool>,
    /// The token id had not been seen (the replay guard took it).
    pub token_id_fresh: bool,
    /// A relay batch holds the dispatch row right now (SQLite: its lease columns are set): the
    /// order is being handed to a partner and the relay has not recorded to whom yet. On
    /// Postgres the lease is the row's lock and the report's transaction waits for it instead.
    pub dispatch_in_flight: bool,
}

/// The verdict, in the order the checks are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The order does not exist, or is not routed to this partner: `PERMISSION_DENIED`, with the
    /// same answer in every case (a partner learns nothing about other partners' orders).
    NotRouted,
    /// Not routed to this partner *yet*: a relay batch holds the order right now, so the
    /// partner's report may have overtaken the relay's bookkeeping of the send. `UNAVAILABLE`
    /// with a retry hint of a few milliseconds; nothing changes.
    InFlight,
    /// The token id was used before: `UNAUTHENTICATED`.
    Replayed,
    /// This partner used the report id for another order: `INVALID_ARGUMENT` (report ids are
    /// unique per partner).
    ReportIdReused,
    /// The report was accepted before: `duplicate = true`, nothing changes.
    Duplicate,
    /// Accept it.
    Apply(Effects),
}

/// What accepting a report changes, all in one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// The order's status afterwards (its history gets the reported status either way).
    pub order_status: OrderStatus,
    /// Record the report's tracking id on the order.
    pub record_tracking: bool,
    /// Mark the dispatch row `ACKNOWLEDGED` (handover done: no more re-sends).
    pub acknowledge: bool,
    /// Remember the partner's refusal and put the dispatch row back to `PENDING` for routing.
    pub reroute: bool,
    /// The order had reached a final state: the event is kept, flagged for operators, and
    /// changes nothing else.
    pub needs_review: bool,
}

/// Decides what a report from `reporter` with `reported` status (and a tracking id, or not)
/// does to the order in `snapshot`.
pub fn decide(
    snapshot: &OrderSnapshot,
    reporter: &str,
    reported: OrderStatus,
    has_tracking: bool,
) -> Decision {
    let routed_now = snapshot.routed_partner.as_deref() == Some(reporter);
    // A partner that refused the order saw it: it may still get its own earlier reports
    // answered as duplicates (a retry of the rejection), nothing more.
    if !routed_now && !snapshot.rejected_by_reporter {
        return if snapshot.dispatch_in_flight {
            Decision::InFlight
        } else {
            Decision::NotRouted
        };
    }
    if !snapshot.token_id_fresh {
        return Decision::Replayed;
    }
    match snapshot.earlier_report_same_order {
        Some(true) => return Decision::Duplicate,
        Some(false) => return Decision::ReportIdReused,
        None => {}
    }
    if !routed_now {
        return Decision::NotRouted;
    }
    if is_final(snapshot.status) {
        // Why not apply it: after DELIVERED a partner's "EXCEPTION" or "SHIPPED" is either a
        // mistake or something a person must look at (a return?); silently moving a delivered
        // order backwards would mislead the customer.
        return Decision::Apply(Effects {
            order_status: snapshot.status,
            record_tracking: false,
            acknowledge: false,
            reroute: false,
            needs_review: true,
        });
    }
    let reroute = reported == OrderStatus::RejectedByPartner;
    if reroute && snapshot.dispatch_state == Some(DispatchState::Acknowledged) {
        // A rejection after this partner confirmed the order: it may already be on its way.
        // Routing it to the next partner could ship it twice; a person decides (and replays
        // it with RetryDispatches if it must go elsewhere).
        return Decision::Apply(Effects {
            order_status: snapshot.status,
            record_tracking: false,
            acknowledge: false,
            reroute: false,
            needs_review: true,
        });
    }
    Decision::Apply(Effects {
        order_status: status_after(snapshot.status, reported),
        record_tracking: has_tracking && !reroute,
        acknowledge: acknowledges(reported)
            && snapshot.dispatch_state != Some(DispatchState::Acknowledged),
        reroute,
        needs_review: false,
    })
}

// The status rules are the contract's, shared with Orders (which shows the same status).
pub use waybill_proto::status::{acknowledges, is_final, status_after};

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(status: OrderStatus) -> OrderSnapshot {
        OrderSnapshot {
            status,
            routed_partner: Some("acme".to_owned()),
            dispatch_state: Some(DispatchState::Sent),
            rejected_by_reporter: false,
            earlier_report_same_order: None,
            token_id_fresh: true,
            dispatch_in_flight: false,
        }
    }

    #[test]
    fn a_rejection_after_the_partner_confirmed_is_kept_for_review_not_rerouted() {
        let confirmed = OrderSnapshot {
            dispatch_state: Some(DispatchState::Acknowledged),
            ..routed(OrderStatus::ReceivedByPartner)
        };
        let after = effects(decide(
            &confirmed,
            "acme",
            OrderStatus::RejectedByPartner,
            false,
        ));
        assert_eq!(after.order_status, OrderStatus::ReceivedByPartner);
        assert!(after.needs_review && !after.reroute && !after.acknowledge);
        // Before a confirmation a rejection re-routes, as always.
        let sent = effects(decide(
            &routed(OrderStatus::SentToPartner),
            "acme",
            OrderStatus::RejectedByPartner,
            false,
        ));
        assert!(sent.reroute && !sent.needs_review);
    }

    fn effects(decision: Decision) -> Effects {
        match decision {
            Decision::Apply(effects) => effects,
            other => panic!("expected Apply, got {other:?}"),
        }
    }

    #[test]
    fn only_the_routed_partner_may_report() {
        let snapshot = routed(OrderStatus::SentToPartner);
        assert_eq!(
            decide(&snapshot, "other", OrderStatus::Shipped, false),
            Decision::NotRouted
        );
        let unrouted = OrderSnapshot {
            routed_partner: None,
            ..snapshot
        };
        assert_eq!(
            decide(&unrouted, "acme", OrderStatus::Shipped, false),
            Decision::NotRouted
        );
    }

    #[test]
    fn a_report_that_overtakes_the_relays_bookkeeping_is_asked_to_retry() {
        // Leased for its first send, the partner not recorded yet: retry in a moment.
        let in_flight = OrderSnapshot {
            routed_partner: None,
            dispatch_state: Some(DispatchState::Pending),
            dispatch_in_flight: true,
            ..routed(OrderStatus::Placed)
        };
        assert_eq!(
            decide(&in_flight, "acme", OrderStatus::ReceivedByPartner, true),
            Decision::InFlight
        );
        // Checked before the replay guard's verdict: the retry carries a fresh token anyway.
        let replayed = OrderSnapshot {
            token_id_fresh: false,
            ..in_flight.clone()
        };
        assert_eq!(
            decide(&replayed, "acme", OrderStatus::ReceivedByPartner, true),
            Decision::InFlight
        );
        // Once recorded, the same report is applied.
        let recorded = OrderSnapshot {
            routed_partner: Some("acme".to_owned()),
            dispatch_state: Some(DispatchState::Sent),
            dispatch_in_flight: false,
            ..in_flight
        };
        assert!(matches!(
            decide(&recorded, "acme", OrderStatus::ReceivedByPartner, true),
            Decision::Apply(_)
        ));
    }

    #[test]
    fn checks_come_in_order_routed_then_replay_then_new() {
        let replayed = OrderSnapshot {
            token_id_fresh: false,
            earlier_report_same_order: Some(true),
            ..routed(OrderStatus::Shipped)
        };
        assert_eq!(
            decide(&replayed, "acme", OrderStatus::Shipped, false),
            Decision::Replayed
        );
        assert_eq!(
            decide(&replayed, "other", OrderStatus::Shipped, false),
            Decision::NotRouted
        );
        let duplicate = OrderSnapshot {
            token_id_fresh: true,
            ..replayed
        };
        assert_eq!(
            decide(&duplicate, "acme", OrderStatus::Shipped, false),
            Decision::Duplicate
        );
        let reused = OrderSnapshot {
            earlier_report_same_order: Some(false),
            ..duplicate
        };
        assert_eq!(
            decide(&reused, "acme", OrderStatus::Shipped, false),
            Decision::ReportIdReused
        );
    }

    #[test]
    fn received_acknowledges_the_handover_and_records_tracking() {
        let applied = effects(decide(
            &routed(OrderStatus::SentToPartner),
            "acme",
            OrderStatus::ReceivedByPartner,
            true,
        ));
        assert_eq!(
            applied,
            Effects {
                order_status: OrderStatus::ReceivedByPartner,
                record_tracking: true,
                acknowledge: true,
                reroute: false,
                needs_review: false,
            }
        );
        let already = OrderSnapshot {
            dispatch_state: Some(DispatchState::Acknowledged),
            ..routed(OrderStatus::ReceivedByPartner)
        };
        assert!(!effects(decide(&already, "acme", OrderStatus::Shipped, false)).acknowledge);
    }

    #[test]
    fn late_reports_are_kept_without_moving_the_order_back() {
        let applied = effects(decide(
            &routed(OrderStatus::Shipped),
            "acme",
            OrderStatus::ReceivedByPartner,
            false,
        ));
        assert_eq!(applied.order_status, OrderStatus::Shipped);
        assert_eq!(
            status_after(OrderStatus::Exception, OrderStatus::Shipped),
            OrderStatus::Shipped
        );
        assert_eq!(
            status_after(OrderStatus::Shipped, OrderStatus::Exception),
            OrderStatus::Exception
        );
        assert_eq!(
            status_after(OrderStatus::ReceivedByPartner, OrderStatus::Delivered),
            OrderStatus::Delivered
        );
    }

    #[test]
    fn after_delivered_reports_are_flagged_and_change_nothing() {
        for reported in [
            OrderStatus::Exception,
            OrderStatus::Shipped,
            OrderStatus::RejectedByPartner,
        ] {
            let applied = effects(decide(
                &routed(OrderStatus::Delivered),
                "acme",
                reported,
                true,
            ));
            assert_eq!(
                applied,
                Effects {
                    order_status: OrderStatus::Delivered,
                    record_tracking: false,
                    acknowledge: false,
                    reroute: false,
                    needs_review: true,
                }
            );
        }
    }

    #[test]
    fn a_rejection_reroutes_and_then_only_duplicates_are_answered() {
        let applied = effects(decide(
            &routed(OrderStatus::SentToPartner),
            "acme",
            OrderStatus::RejectedByPartner,
            true,
        ));
        assert!(applied.reroute && !applied.acknowledge && !applied.record_tracking);
        assert_eq!(applied.order_status, OrderStatus::RejectedByPartner);
        let after = OrderSnapshot {
            routed_partner: None,
            rejected_by_reporter: true,
            earlier_report_same_order: Some(true),
            ..routed(OrderStatus::RejectedByPartner)
        };
        assert_eq!(
            decide(&after, "acme", OrderStatus::RejectedByPartner, false),
            Decision::Duplicate
        );
        let new_report = OrderSnapshot {
            earlier_report_same_order: None,
            ..after
        };
        assert_eq!(
            decide(&new_report, "acme", OrderStatus::Shipped, false),
            Decision::NotRouted
        );
    }
}
