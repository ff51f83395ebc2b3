//! The records the relay produces: a partner's copy of an order, the audit copy, and an order
//! event. Key = order id everywhere, so one order's messages stay in one partition, in order.
//! Headers carry the message type and schema version, the correlation id (= order id), the
//! reply-to address, the region and the W3C trace context of the placing request.

use std::borrow::Cow;

use waybill_proto::{
    headers,
    history::{EventAudience, HistoryEvent},
    outbox::{self, PerSend},
    v1::OrderStatus,
};

use crate::domain::model::{LeasedOrder, UnpublishedEvent};

/// One record ready to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Destination topic.
    pub topic: String,
    /// The order id.
    pub key: String,
    /// Encoded protobuf.
    pub payload: Vec<u8>,
    /// Header name and UTF-8 value pairs (names are the static ones of
    /// [`waybill_proto::headers`] when built here, owned when read back from the audit outbox).
    pub headers: Vec<(Cow<'static, str>, String)>,
}

impl OutgoingMessage {
    /// Carries `trace` (the context of the relay's span for this order) in place of the trace
    /// context read from the dispatch row, so the consumer's span is a child of the dispatch,
    /// itself a child of the placing request. An empty `trace` (no tracing subscriber) keeps
    /// the row's context, so the trace id travels either way.
    pub fn in_trace(mut self, trace: &waybill_service_kit::telemetry::TraceContext) -> Self {
        if trace.traceparent.is_empty() {
            return self;
        }
        self.headers
            .retain(|(name, _)| name != headers::TRACEPARENT && name != headers::TRACESTATE);
        self.headers
            .push((headers::TRACEPARENT.into(), trace.traceparent.clone()));
        if !trace.tracestate.is_empty() {
            self.headers
                .push((headers::TRACESTATE.into(), trace.tracestate.clone()));
        }
        self
    }
}

/// Where a message says it comes from and where to answer.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The Waybill region.
    pub region: &'a str,
    /// The StatusIngest address.
    pub reply_to: &'a str,
}

/// The `DispatchedOrder` payload for `order`, meant for `partner_id`, on its `send_count`-th
/// send: the stored message with the per-send fields appended ([`outbox::with_per_send`]: the
/// partner decodes one `DispatchedOrder` with every field; the order's own fields are never
/// decoded and encoded again on the way).
pub fn dispatched_payload(
    order: &LeasedOrder,
    partner_id: &str,
    send_count: i32,
    origin: Origin<'_>,
) -> Vec<u8> {
    outbox::with_per_send(
        &order.message,
        &PerSend {
            partner_id,
            send_count,
            reply_to: origin.reply_to,
            region: origin.region,
        },
    )
}

/// The partner's copy (`audit == false`) or the audit copy of an order, carrying `payload`.
pub fn order_message(
    order: &LeasedOrder,
    payload: Vec<u8>,
    topic: String,
    audit: bool,
    origin: Origin<'_>,
) -> OutgoingMessage {
    let message_type = if audit {
        headers::TYPE_AUDIT_ORDER
    } else {
        headers::TYPE_DISPATCHED_ORDER
    };
    OutgoingMessage {
        topic,
        key: order.order_id.to_string(),
        payload,
        headers: standard_headers(
            message_type,
            &order.order_id.to_string(),
            origin,
            &order.traceparent,
            &order.tracestate,
        ),
    }
}

/// An order-events record for one history event (encoded by the one history encoder,
/// [`waybill_proto::history`], which Orders' `WatchOrder` uses too).
pub fn order_event_message(
    event: &UnpublishedEvent,
    topic: String,
    origin: Origin<'_>,
) -> OutgoingMessage {
    let order_id = event.order_id.to_string();
    let payload = HistoryEvent {
        order_id: order_id.clone(),
        sequence: event.seq,
        status: OrderStatus::from_short_name(&event.status).unwrap_or(OrderStatus::Unspecified),
        partner_id: event.partner_id.clone(),
        detail: event.detail.clone(),
        tracking_id: event.tracking_id.clone(),
        occurred_at: event.occurred_at,
        recorded_at: event.recorded_at,
        detail_code: event.detail_code.clone(),
        action_required: event.action_required,
        needs_review: event.needs_review,
    }
    .order_event(EventAudience {
        customer_id: &event.customer_id,
        customer_email: &event.customer_email,
        region: &event.region,
    });
    OutgoingMessage {
        topic,
        headers: standard_headers(headers::TYPE_ORDER_EVENT, &order_id, origin, "", ""),
        key: order_id,
        payload,
    }
}

fn standard_headers(
    message_type: &str,
    order_id: &str,
    origin: Origin<'_>,
    traceparent: &str,
    tracestate: &str,
) -> Vec<(Cow<'static, str>, String)> {
    let mut list = vec![
        (headers::MESSAGE_TYPE.into(), message_type.to_owned()),
        (
            headers::SCHEMA_VERSION_HEADER.into(),
            headers::SCHEMA_VERSION.to_owned(),
        ),
        (headers::CORRELATION_ID.into(), order_id.to_owned()),
        (headers::REPLY_TO.into(), origin.reply_to.to_owned()),
        (headers::REGION.into(), origin.region.to_owned()),
    ];
    if !traceparent.is_empty() {
        list.push((headers::TRACEPARENT.into(), traceparent.to_owned()));
    }
    if !tracestate.is_empty() {
        list.push((headers::TRACESTATE.into(), tracestate.to_owned()));
    }
    list
}
