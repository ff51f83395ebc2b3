//! Lease requests, fences and row updates for the store tests.

use chrono::Duration as Span;
use uuid::Uuid;
use waybill_dispatcher::store::{Fence, LeaseRequest, RowUpdate};
use waybill_proto::v1::DispatchState;

use super::Harness;

/// A lease request of `owner` for up to `limit` rows, at the harness clock's now.
pub fn lease(h: &Harness, owner: &str, limit: u32) -> LeaseRequest {
    let now = h.clock_now();
    LeaseRequest {
        owner: owner.to_owned(),
        batch_id: Uuid::new_v4(),
        now,
        expires_at: now + Span::seconds(30),
        limit,
    }
}

/// The fence of a batch leased with `request`.
pub fn fence(request: &LeaseRequest) -> Fence {
    Fence {
        owner: request.owner.clone(),
        batch_id: request.batch_id,
    }
}

/// The row update of a first successful send to acme at `now`.
pub fn sent(order_id: Uuid, now: chrono::DateTime<chrono::Utc>) -> RowUpdate {
    RowUpdate {
        order_id,
        state: DispatchState::Sent,
        attempts: 0,
        next_attempt_at: now,
        last_error: Some(String::new()),
        partner_id: Some("acme".to_owned()),
        route_id: Some("acme-DE".to_owned()),
        resends: 0,
        sent_at: Some(now),
        ack_due_at: Some(now + Span::minutes(10)),
        sent_position: None,
    }
}
