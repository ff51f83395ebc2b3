//! Conversions between the domain records and the `waybill.v1` admin messages.

use std::time::Duration;

use chrono::{DateTime, Utc};
use waybill_proto::{time::to_timestamp, v1};

use crate::domain::{
    model::{AttemptRecord, DispatchRecord, PartnerKeyRecord, PartnerRecord, RouteRecord, ShipTo},
    route_change::RoutingImpact,
    routing::{Explanation, Verdict},
};

/// A protobuf duration for a (non-negative) duration.
pub fn to_proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// A partner as operators see it.
pub fn partner(record: PartnerRecord) -> v1::Partner {
    v1::Partner {
        id: record.id,
        display_name: record.display_name,
        enabled: record.enabled,
        handover_deadline: Some(to_proto_duration(
            record.handover_deadline.to_std().unwrap_or_default(),
        )),
        resend_budget: Some(record.resend_budget),
        topic: record.topic,
        created_at: Some(to_timestamp(record.created_at)),
        impact: None,
    }
}

/// A route as operators see it.
pub fn route(record: RouteRecord) -> v1::Route {
    v1::Route {
        id: record.id,
        partner_id: record.partner_id,
        country_code: record.country_code,
        region: record.region,
        postal_prefix: record.postal_prefix,
        priority: record.priority,
        enabled: record.enabled,
        impact: None,
    }
}

/// A routing change's impact as operators see it: weighed over the orders created since
/// `since`; `partial` when only the busiest destinations were; `applied` when the change was
/// made.
pub fn impact(
    impact: &RoutingImpact,
    since: DateTime<Utc>,
    partial: bool,
    applied: bool,
) -> v1::RoutingImpact {
    v1::RoutingImpact {
        applied,
        countries_left_without_route: impact.countries_left_without_route.clone(),
        since: Some(to_timestamp(since)),
        orders_considered: impact.orders_considered,
        orders_rerouted: impact.orders_rerouted,
        orders_unroutable: impact.orders_unroutable,
        shifts: impact
            .shifts
            .iter()
            .map(|shift| v1::PartnerShift {
                from_partner_id: shift.from.clone().unwrap_or_default(),
                to_partner_id: shift.to.clone().unwrap_or_default(),
                orders: shift.orders,
            })
            .collect(),
        partial,
    }
}

/// A key as operators see it.
pub fn key(record: PartnerKeyRecord) -> v1::PartnerKey {
    v1::PartnerKey {
        partner_id: record.partner_id,
        key_id: record.key_id,
        public_key: record.public_key,
        created_at: Some(to_timestamp(record.created_at)),
        revoked_at: record.revoked_at.map(to_timestamp),
        last_used_at: record.last_used_at.map(to_timestamp),
    }
}

/// A dispatch row (with its attempt log for `GetDispatch`).
pub fn dispatch(record: DispatchRecord, attempts: Vec<AttemptRecord>) -> v1::Dispatch {
    v1::Dispatch {
        order_id: record.order_id.to_string(),
        state: record.state.into(),
        attempts: record.attempts,
        next_attempt_at: Some(to_timestamp(record.next_attempt_at)),
        last_error: record.last_error.unwrap_or_default(),
        partner_id: record.partner_id.unwrap_or_default(),
        route_id: record.route_id.unwrap_or_default(),
        lease_owner: record.lease_owner.unwrap_or_default(),
        lease_expires_at: record.lease_expires_at.map(to_timestamp),
        sent_at: record.sent_at.map(to_timestamp),
        resends: record.resends,
        created_at: Some(to_timestamp(record.created_at)),
        updated_at: Some(to_timestamp(record.updated_at)),
        total: Some(v1::Money {
            currency_code: record.currency_code,
            minor_units: record.total_minor,
        }),
        attempt_log: attempts
            .into_iter()
            .map(|a| v1::DispatchAttempt {
                attempt: a.attempt,
                at: Some(to_timestamp(a.at)),
                error: a.error,
                partner_id: a.partner_id,
                topic: a.topic,
            })
            .collect(),
    }
}

/// A destination from a protobuf address.
pub fn ship_to(address: v1::Address) -> ShipTo {
    ShipTo {
        line1: address.line1,
        line2: address.line2,
        city: address.city,
        region: address.region,
        postal_code: address.postal_code,
        country_code: address.country_code.trim().to_ascii_uppercase(),
    }
}

/// A routing explanation.
pub fn explanation(explanation: Explanation) -> v1::ExplainRouteResponse {
    v1::ExplainRouteResponse {
        chosen: explanation.chosen.map(route),
        verdicts: explanation
            .verdicts
            .into_iter()
            .map(
                |Verdict {
                     route: r,
                     matched,
                     reason,
                 }| v1::RouteVerdict {
                    route: Some(route(r)),
                    matched,
                    reason,
                },
            )
            .collect(),
    }
}
