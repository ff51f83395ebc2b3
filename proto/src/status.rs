//! The order status contract: where an order stands given what happened to it. StatusIngest
//! keeps `orders.status` by it as reports arrive, and Orders shows customers the status its
//! history adds up to by the same rule, so the two never disagree:
//!
//! - along the normal journey (placed, sent, received, shipped, delivered) an order never moves
//!   backwards: a late report (RECEIVED after SHIPPED, the relay's SENT_TO_PARTNER recorded
//!   after the partner's RECEIVED) joins the history and leaves the status;
//! - statuses off the journey (EXCEPTION, REJECTED_BY_PARTNER) become current, and so does any
//!   status after them;
//! - DELIVERED is final: what comes after it is kept for operators (flagged `needs_review`)
//!   and changes nothing.

use crate::v1::OrderStatus;

/// A final state: nothing a partner reports afterwards changes the order.
pub fn is_final(status: OrderStatus) -> bool {
    status == OrderStatus::Delivered
}

/// Statuses that show the partner has the order (the handover is done).
pub fn acknowledges(status: OrderStatus) -> bool {
    matches!(
        status,
        OrderStatus::ReceivedByPartner
            | OrderStatus::Shipped
            | OrderStatus::Delivered
            | OrderStatus::Exception
    )
}

/// Position along the normal journey; `None` for statuses off it (exception, rejection).
fn progress(status: OrderStatus) -> Option<u8> {
    match status {
        OrderStatus::Placed => Some(0),
        OrderStatus::SentToPartner => Some(1),
        OrderStatus::ReceivedByPartner => Some(2),
        OrderStatus::Shipped => Some(3),
        OrderStatus::Delivered => Some(4),
        OrderStatus::Unspecified | OrderStatus::Exception | OrderStatus::RejectedByPartner => None,
    }
}

/// The order's status after `reported`: a report that arrives late (RECEIVED after SHIPPED) is
/// kept in the history but does not move the order backwards; a final status stays; anything
/// else becomes current.
pub fn status_after(current: OrderStatus, reported: OrderStatus) -> OrderStatus {
    if is_final(current) {
        return current;
    }
    match (progress(current), progress(reported)) {
        (Some(now), Some(new)) if new < now => current,
        _ => reported,
    }
}

/// The status a history adds up to: each event, oldest first, with whether it was flagged for
/// review (recorded after a final state: it changes nothing). PLACED for an empty history.
pub fn current(history: impl IntoIterator<Item = (OrderStatus, bool)>) -> OrderStatus {
    history
        .into_iter()
        .filter(|(_, needs_review)| !needs_review)
        .fold(OrderStatus::Placed, |now, (status, _)| {
            status_after(now, status)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::OrderStatus::*;

    #[test]
    fn the_journey_only_moves_forward_and_off_journey_statuses_become_current() {
        assert_eq!(status_after(Shipped, ReceivedByPartner), Shipped);
        assert_eq!(
            status_after(ReceivedByPartner, SentToPartner),
            ReceivedByPartner
        );
        assert_eq!(
            status_after(SentToPartner, ReceivedByPartner),
            ReceivedByPartner
        );
        assert_eq!(status_after(Shipped, Exception), Exception);
        assert_eq!(status_after(Exception, Shipped), Shipped);
        assert_eq!(
            status_after(RejectedByPartner, SentToPartner),
            SentToPartner
        );
        assert_eq!(status_after(Delivered, Exception), Delivered, "final");
    }

    #[test]
    fn a_history_adds_up_to_its_furthest_status_not_its_latest_event() {
        assert_eq!(current([]), Placed);
        assert_eq!(
            current([
                (Placed, false),
                (SentToPartner, false),
                (Shipped, false),
                (ReceivedByPartner, false),
            ]),
            Shipped,
            "a late RECEIVED after SHIPPED"
        );
        assert_eq!(
            current([
                (Placed, false),
                (ReceivedByPartner, false),
                (SentToPartner, false),
            ]),
            ReceivedByPartner,
            "the relay's bookkeeping recorded after the partner's report"
        );
        assert_eq!(
            current([
                (Placed, false),
                (SentToPartner, false),
                (RejectedByPartner, false),
                (SentToPartner, false),
            ]),
            SentToPartner,
            "re-routed after a refusal"
        );
        assert_eq!(
            current([(Placed, false), (Delivered, false), (Exception, true)]),
            Delivered,
            "a report after the final state is for review only"
        );
    }
}
