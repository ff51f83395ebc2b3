//! One `FromRow` struct per row shape, decoded alike on both backends (ids and instants through
//! the kit's [`Id`] and [`Instant`]), and its conversion to the domain record.

use std::collections::HashMap;

use uuid::Uuid;
use waybill_proto::{outbox::RoutingView, v1::DispatchState};
use waybill_service_kit::db::{Id, Instant};

use super::error::StoreError;
use crate::domain::model::{
    AttemptRecord, DispatchRecord, LeasedOrder, PartnerKeyRecord, PartnerRecord, RouteRecord,
    SentPosition, ShipTo, UnpublishedEvent,
};
use crate::domain::{record::AuditCopy, route_change::RecentDestination};

fn parse_state(name: &str) -> Result<DispatchState, StoreError> {
    DispatchState::from_short_name(name)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown dispatch state {name:?}")))
}

/// An order's destination columns.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct ShipToRow {
    ship_line1: String,
    ship_line2: String,
    ship_city: String,
    ship_region: String,
    ship_postal_code: String,
    ship_country_code: String,
}

impl From<ShipToRow> for ShipTo {
    fn from(row: ShipToRow) -> Self {
        Self {
            line1: row.ship_line1,
            line2: row.ship_line2,
            city: row.ship_city,
            region: row.ship_region,
            postal_code: row.ship_postal_code,
            country_code: row.ship_country_code,
        }
    }
}

/// A leased dispatch row: its state and its stored message.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct LeasedRow {
    order_id: Id,
    state: String,
    attempts: i32,
    resends: i32,
    partner_id: Option<String>,
    acknowledged: bool,
    sent_at: Option<Instant>,
    /// Where the latest send landed (both or neither; `NULL` before migration 0008).
    sent_partition: Option<i32>,
    sent_offset: Option<i64>,
    /// Comma-separated (partner ids have no ','); `NULL` or empty when none.
    rejected_partners: Option<String>,
    traceparent: String,
    tracestate: String,
    /// `NULL` on rows placed before the outbox carried its message (see `legacy.rs`).
    message: Option<Vec<u8>>,
    /// The routing tables' version when the row was leased (migration 0010).
    routing_version: i64,
}

impl LeasedRow {
    /// The order id.
    pub(super) fn id(&self) -> Uuid {
        self.order_id.into()
    }

    /// The routing tables' version in the lease's snapshot.
    pub(super) fn routing_version(&self) -> i64 {
        self.routing_version
    }

    /// Whether the row carries its message.
    pub(super) fn has_message(&self) -> bool {
        self.message.is_some()
    }

    /// The leased order; `legacy` holds the messages of rows that carry none.
    pub(super) fn into_leased(
        self,
        legacy: &mut HashMap<Uuid, Vec<u8>>,
    ) -> Result<LeasedOrder, StoreError> {
        let order_id: Uuid = self.order_id.into();
        let message = match self.message {
            Some(message) => message,
            None => legacy
                .remove(&order_id)
                .ok_or_else(|| StoreError::Corrupt(format!("order {order_id} has no order row")))?,
        };
        // Routing reads the destination and the total from the message itself.
        let order = RoutingView::read(&message).map_err(|error| {
            StoreError::Corrupt(format!(
                "order {order_id}: undecodable outbox message: {error}"
            ))
        })?;
        let ship_to = order.ship_to.unwrap_or_default();
        let total = order.total.unwrap_or_default();
        Ok(LeasedOrder {
            order_id,
            state: parse_state(&self.state)?,
            attempts: self.attempts,
            resends: self.resends,
            partner_id: self.partner_id,
            acknowledged: self.acknowledged,
            sent_at: self.sent_at.map(Into::into),
            sent_position: match (self.sent_partition, self.sent_offset) {
                (Some(partition), Some(offset)) => Some(SentPosition { partition, offset }),
                _ => None,
            },
            rejected_partners: self
                .rejected_partners
                .iter()
                .flat_map(|list| list.split(','))
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .collect(),
            traceparent: self.traceparent,
            tracestate: self.tracestate,
            message,
            ship_to: ShipTo {
                line1: ship_to.line1,
                line2: ship_to.line2,
                city: ship_to.city,
                region: ship_to.region,
                postal_code: ship_to.postal_code,
                country_code: ship_to.country_code,
            },
            currency_code: total.currency_code,
            total_minor: total.minor_units,
        })
    }
}

/// A partner.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct PartnerRow {
    id: String,
    display_name: String,
    enabled: bool,
    handover_deadline_ms: i64,
    resend_budget: i32,
    topic: String,
    created_at: Instant,
    updated_at: Instant,
}

impl From<PartnerRow> for PartnerRecord {
    fn from(row: PartnerRow) -> Self {
        Self {
            id: row.id,
            display_name: row.display_name,
            enabled: row.enabled,
            handover_deadline: chrono::Duration::milliseconds(row.handover_deadline_ms),
            resend_budget: row.resend_budget,
            topic: row.topic,
            created_at: row.created_at.into(),
            updated_at: row.updated_at.into(),
        }
    }
}

/// A route.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct RouteRow {
    id: String,
    partner_id: String,
    country_code: String,
    region: String,
    postal_prefix: String,
    priority: i32,
    enabled: bool,
}

impl From<RouteRow> for RouteRecord {
    fn from(row: RouteRow) -> Self {
        Self {
            id: row.id,
            partner_id: row.partner_id,
            country_code: row.country_code,
            region: row.region,
            postal_prefix: row.postal_prefix,
            priority: row.priority,
            enabled: row.enabled,
        }
    }
}

/// A partner's signing key.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct KeyRow {
    partner_id: String,
    key_id: String,
    public_key: Vec<u8>,
    created_at: Instant,
    revoked_at: Option<Instant>,
    last_used_at: Option<Instant>,
}

impl From<KeyRow> for PartnerKeyRecord {
    fn from(row: KeyRow) -> Self {
        Self {
            partner_id: row.partner_id,
            key_id: row.key_id,
            public_key: row.public_key,
            created_at: row.created_at.into(),
            revoked_at: row.revoked_at.map(Into::into),
            last_used_at: row.last_used_at.map(Into::into),
        }
    }
}

/// A dispatch row joined with its order's amount.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct DispatchRow {
    order_id: Id,
    state: String,
    attempts: i32,
    next_attempt_at: Instant,
    last_error: Option<String>,
    partner_id: Option<String>,
    route_id: Option<String>,
    lease_owner: Option<String>,
    lease_expires_at: Option<Instant>,
    sent_at: Option<Instant>,
    resends: i32,
    ack_due_at: Option<Instant>,
    created_at: Instant,
    updated_at: Instant,
    currency_code: String,
    total_minor: i64,
}

impl TryFrom<DispatchRow> for DispatchRecord {
    type Error = StoreError;

    fn try_from(row: DispatchRow) -> Result<Self, StoreError> {
        Ok(Self {
            order_id: row.order_id.into(),
            state: parse_state(&row.state)?,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at.into(),
            last_error: row.last_error,
            partner_id: row.partner_id,
            route_id: row.route_id,
            lease_owner: row.lease_owner,
            lease_expires_at: row.lease_expires_at.map(Into::into),
            sent_at: row.sent_at.map(Into::into),
            resends: row.resends,
            ack_due_at: row.ack_due_at.map(Into::into),
            created_at: row.created_at.into(),
            updated_at: row.updated_at.into(),
            currency_code: row.currency_code,
            total_minor: row.total_minor,
        })
    }
}

/// One entry of the attempt log.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct AttemptRow {
    attempt: i32,
    at: Instant,
    error: String,
    partner_id: String,
    topic: String,
}

impl From<AttemptRow> for AttemptRecord {
    fn from(row: AttemptRow) -> Self {
        Self {
            attempt: row.attempt,
            at: row.at.into(),
            error: row.error,
            partner_id: row.partner_id,
            topic: row.topic,
        }
    }
}

/// A history event not yet on the order-events topic, with its order's routing fields.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct EventRow {
    order_id: Id,
    seq: i64,
    status: String,
    partner_id: String,
    detail: String,
    tracking_id: String,
    occurred_at: Instant,
    recorded_at: Instant,
    detail_code: String,
    action_required: bool,
    needs_review: bool,
    customer_id: String,
    customer_email: String,
    region: String,
}

impl From<EventRow> for UnpublishedEvent {
    fn from(row: EventRow) -> Self {
        Self {
            order_id: row.order_id.into(),
            seq: row.seq,
            status: row.status,
            partner_id: row.partner_id,
            detail: row.detail,
            tracking_id: row.tracking_id,
            occurred_at: row.occurred_at.into(),
            recorded_at: row.recorded_at.into(),
            detail_code: row.detail_code,
            action_required: row.action_required,
            needs_review: row.needs_review,
            customer_id: row.customer_id,
            customer_email: row.customer_email,
            region: row.region,
        }
    }
}

/// An audit copy waiting in the audit outbox.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct AuditRow {
    order_id: Id,
    topic: String,
    payload: Vec<u8>,
    /// A JSON array of `[name, value]` pairs.
    headers: String,
    attempts: i32,
    last_error: String,
    due_at: Instant,
}

impl TryFrom<AuditRow> for AuditCopy {
    type Error = StoreError;

    fn try_from(row: AuditRow) -> Result<Self, StoreError> {
        Ok(Self {
            order_id: row.order_id.into(),
            topic: row.topic,
            payload: row.payload,
            headers: serde_json::from_str(&row.headers)
                .map_err(|e| StoreError::Corrupt(format!("audit headers: {e}")))?,
            attempts: row.attempts,
            last_error: row.last_error,
            due_at: row.due_at.into(),
        })
    }
}

/// Rows of one state.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct StateCountRow {
    state: String,
    rows: i64,
}

impl TryFrom<StateCountRow> for (DispatchState, i64) {
    type Error = StoreError;

    fn try_from(row: StateCountRow) -> Result<Self, StoreError> {
        Ok((parse_state(&row.state)?, row.rows))
    }
}

/// Converts every row, failing on the first that does not convert.
pub(super) fn convert<R, T>(rows: Vec<R>) -> Result<Vec<T>, StoreError>
where
    T: TryFrom<R, Error = StoreError>,
{
    rows.into_iter().map(T::try_from).collect()
}

/// Recent orders to one destination (`sql/recent_destinations.*.sql`).
#[derive(Debug, sqlx::FromRow)]
pub(super) struct DestinationRow {
    country_code: String,
    region: String,
    postal_code: String,
    /// Comma-separated; empty when nobody refused them.
    rejected_partners: String,
    orders: i64,
}

impl From<DestinationRow> for RecentDestination {
    fn from(row: DestinationRow) -> Self {
        Self {
            ship_to: ShipTo {
                country_code: row.country_code,
                region: row.region,
                postal_code: row.postal_code,
                ..ShipTo::default()
            },
            rejected_partners: row
                .rejected_partners
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
            orders: row.orders,
        }
    }
}
