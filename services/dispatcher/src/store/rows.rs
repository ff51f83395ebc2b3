//! One `FromRow` struct per row shape, decoded alike on both backends (ids and instants through
//! the kit's [`Id`] and [`Instant`]), and its conversion to the domain record.

use std::collections::HashMap;

use uuid::Uuid;
use waybill_proto::v1::DispatchState;
use waybill_service_kit::db::{Id, Instant, OrderLineRow};

use super::{AuditCopy, StoreError};
use crate::domain::model::{
    AttemptRecord, DispatchRecord, LeasedOrder, OrderLine, PartnerKeyRecord, PartnerRecord,
    RouteRecord, ShipTo, UnpublishedEvent,
};

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

/// A leased dispatch row joined with its order.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct LeasedRow {
    order_id: Id,
    state: String,
    attempts: i32,
    resends: i32,
    partner_id: Option<String>,
    acknowledged: bool,
    /// Comma-separated (partner ids have no ','); `NULL` or empty when none.
    rejected_partners: Option<String>,
    traceparent: String,
    tracestate: String,
    placed_at: Instant,
    customer_id: String,
    customer_name: String,
    customer_email: String,
    customer_phone: String,
    #[sqlx(flatten)]
    ship_to: ShipToRow,
    currency_code: String,
    total_minor: i64,
    region: String,
}

impl TryFrom<LeasedRow> for LeasedOrder {
    type Error = StoreError;

    fn try_from(row: LeasedRow) -> Result<Self, StoreError> {
        Ok(Self {
            order_id: row.order_id.into(),
            state: parse_state(&row.state)?,
            attempts: row.attempts,
            resends: row.resends,
            partner_id: row.partner_id,
            acknowledged: row.acknowledged,
            rejected_partners: row
                .rejected_partners
                .iter()
                .flat_map(|list| list.split(','))
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .collect(),
            traceparent: row.traceparent,
            tracestate: row.tracestate,
            placed_at: row.placed_at.into(),
            customer_id: row.customer_id,
            customer_name: row.customer_name,
            customer_email: row.customer_email,
            customer_phone: row.customer_phone,
            ship_to: row.ship_to.into(),
            currency_code: row.currency_code,
            total_minor: row.total_minor,
            region: row.region,
            lines: Vec::new(),
        })
    }
}

/// Gives each order its lines.
pub(super) fn attach_lines(
    orders: &mut [LeasedOrder],
    mut lines: HashMap<Uuid, Vec<OrderLineRow>>,
) -> Result<(), StoreError> {
    for order in orders {
        order.lines = lines
            .remove(&order.order_id)
            .unwrap_or_default()
            .into_iter()
            .map(|row| {
                Ok(OrderLine {
                    quantity: row.units().ok_or_else(|| {
                        StoreError::Corrupt(format!("bad quantity {}", row.quantity))
                    })?,
                    sku: row.sku,
                    name: row.name,
                    unit_price_minor: row.unit_price_minor,
                    line_total_minor: row.line_total_minor,
                })
            })
            .collect::<Result<_, StoreError>>()?;
    }
    Ok(())
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
}

impl From<KeyRow> for PartnerKeyRecord {
    fn from(row: KeyRow) -> Self {
        Self {
            partner_id: row.partner_id,
            key_id: row.key_id,
            public_key: row.public_key,
            created_at: row.created_at.into(),
            revoked_at: row.revoked_at.map(Into::into),
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
