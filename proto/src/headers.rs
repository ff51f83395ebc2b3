//! Kafka header names and values shared by the dispatcher (producer) and the connector SDK
//! (consumer). Header values are UTF-8 text.

/// The payload's message type, e.g. [`TYPE_DISPATCHED_ORDER`].
pub const MESSAGE_TYPE: &str = "waybill-message-type";
/// The payload's schema version, e.g. [`SCHEMA_VERSION`]; consumers refuse versions they do not
/// know instead of misreading them.
pub const SCHEMA_VERSION_HEADER: &str = "waybill-schema-version";
/// The order id a status report must name as its correlation id.
pub const CORRELATION_ID: &str = "waybill-correlation-id";
/// The StatusIngest address (e.g. `http://ingest.eu.example:50053`) reports must go to.
pub const REPLY_TO: &str = "waybill-reply-to";
/// The Waybill region that produced the message.
pub const REGION: &str = "waybill-region";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace context, vendor part.
pub const TRACESTATE: &str = "tracestate";

/// gRPC response metadata (not a Kafka header): on a retryable refusal, how many milliseconds
/// the caller should wait before retrying, when the server knows better than a generic backoff
/// (StatusIngest sets it when the order is being handed to the partner at that very moment).
pub const RETRY_AFTER_MS: &str = "waybill-retry-after-ms";

/// [`MESSAGE_TYPE`] of a `waybill.v1.DispatchedOrder` on a partner topic.
pub const TYPE_DISPATCHED_ORDER: &str = "waybill.v1.DispatchedOrder";
/// [`MESSAGE_TYPE`] of a `waybill.v1.DispatchedOrder` on the audit topic.
pub const TYPE_AUDIT_ORDER: &str = "waybill.v1.DispatchedOrder+audit";
/// [`MESSAGE_TYPE`] of a `waybill.v1.OrderEvent` on the order-events topic.
pub const TYPE_ORDER_EVENT: &str = "waybill.v1.OrderEvent";
/// The schema version this code writes and reads.
pub const SCHEMA_VERSION: &str = "1";
