//! Decoding and checking a record from a partner topic.
//!
//! A record is believed only when its headers say it is a `DispatchedOrder` of a schema version
//! this SDK knows, its payload decodes, and its correlation id header names the same order as
//! the payload. Anything else is a [`DecodeError`]: the caller sets the record aside (counts,
//! logs and keeps it) and moves on, so one bad record never stops a partition.

use waybill_proto::{headers, outbox, v1::DispatchedOrder};

/// An order received on the partner's topic, with what is needed to answer it.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingOrder {
    /// The order, as Waybill sent it.
    pub order: DispatchedOrder,
    /// The id status reports must carry as their correlation id (the order id).
    pub correlation_id: String,
    /// The StatusIngest address to report to: the region that sent the order.
    pub reply_to: String,
    /// The Waybill region that sent it.
    pub region: String,
    /// W3C `traceparent` of the order's journey, if the sender traced it.
    pub traceparent: Option<String>,
    /// W3C `tracestate`, if any.
    pub tracestate: Option<String>,
}

/// Why a record cannot be treated as an order.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A required header is absent.
    #[error("header {0} is missing")]
    MissingHeader(&'static str),
    /// A header is not UTF-8 text.
    #[error("header {0} is not UTF-8 text")]
    NotText(&'static str),
    /// The record is of another message type.
    #[error("message type {0:?} is not a dispatched order")]
    UnexpectedType(String),
    /// The record uses a schema version this SDK does not know.
    #[error("schema version {0:?} is not supported (this SDK reads version {supported})", supported = headers::SCHEMA_VERSION)]
    UnsupportedSchemaVersion(String),
    /// The payload is not a valid `DispatchedOrder`.
    #[error("payload is not a valid waybill.v1.DispatchedOrder: {0}")]
    Payload(#[from] prost::DecodeError),
    /// The correlation id header and the payload name different orders.
    #[error("correlation id {header:?} does not match the payload's order id {payload:?}")]
    CorrelationMismatch {
        /// The header's value.
        header: String,
        /// The payload's order id.
        payload: String,
    },
}

/// Decodes a record given its headers (name, raw value) and payload.
pub fn decode_dispatched_order<'a>(
    record_headers: impl IntoIterator<Item = (&'a str, &'a [u8])> + Clone,
    payload: &[u8],
) -> Result<IncomingOrder, DecodeError> {
    let find = |name: &'static str| -> Result<Option<String>, DecodeError> {
        record_headers
            .clone()
            .into_iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| {
                std::str::from_utf8(value)
                    .map(str::to_owned)
                    .map_err(|_| DecodeError::NotText(name))
            })
            .transpose()
    };
    let require = |name: &'static str| find(name)?.ok_or(DecodeError::MissingHeader(name));

    let message_type = require(headers::MESSAGE_TYPE)?;
    if message_type != headers::TYPE_DISPATCHED_ORDER {
        return Err(DecodeError::UnexpectedType(message_type));
    }
    let version = require(headers::SCHEMA_VERSION_HEADER)?;
    if version != headers::SCHEMA_VERSION {
        return Err(DecodeError::UnsupportedSchemaVersion(version));
    }
    let correlation_id = require(headers::CORRELATION_ID)?;
    let reply_to = require(headers::REPLY_TO)?;
    let region = require(headers::REGION)?;
    let order = outbox::decode(payload)?;
    if order.order_id != correlation_id {
        return Err(DecodeError::CorrelationMismatch {
            header: correlation_id,
            payload: order.order_id,
        });
    }
    Ok(IncomingOrder {
        order,
        correlation_id,
        reply_to,
        region,
        traceparent: find(headers::TRACEPARENT)?,
        tracestate: find(headers::TRACESTATE)?,
    })
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn record(order_id: &str) -> (Vec<(&'static str, Vec<u8>)>, Vec<u8>) {
        let order = DispatchedOrder {
            order_id: order_id.to_owned(),
            reply_to: "http://127.0.0.1:50053".to_owned(),
            region: "eu".to_owned(),
            ..Default::default()
        };
        let headers = vec![
            (
                headers::MESSAGE_TYPE,
                headers::TYPE_DISPATCHED_ORDER.as_bytes().to_vec(),
            ),
            (
                headers::SCHEMA_VERSION_HEADER,
                headers::SCHEMA_VERSION.as_bytes().to_vec(),
            ),
            (headers::CORRELATION_ID, order_id.as_bytes().to_vec()),
            (headers::REPLY_TO, b"http://127.0.0.1:50053".to_vec()),
            (headers::REGION, b"eu".to_vec()),
            (
                headers::TRACEPARENT,
                b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec(),
            ),
        ];
        (headers, order.encode_to_vec())
    }

    fn decode(
        headers: &[(&'static str, Vec<u8>)],
        payload: &[u8],
    ) -> Result<IncomingOrder, DecodeError> {
        decode_dispatched_order(headers.iter().map(|(k, v)| (*k, v.as_slice())), payload)
    }

    #[test]
    fn decodes_a_well_formed_record() {
        let (headers, payload) = record("o-1");
        let incoming = decode(&headers, &payload).expect("decodes");
        assert_eq!(incoming.correlation_id, "o-1");
        assert_eq!(incoming.reply_to, "http://127.0.0.1:50053");
        assert_eq!(incoming.region, "eu");
        assert!(incoming.traceparent.is_some());
        assert_eq!(incoming.tracestate, None);
        assert_eq!(incoming.order.order_id, "o-1");
    }

    #[test]
    fn refuses_garbage_payloads() {
        let (headers, _) = record("o-1");
        let error = decode(&headers, &[0xff, 0xff, 0xff]).expect_err("garbage");
        assert!(matches!(error, DecodeError::Payload(_)), "{error}");
    }

    #[test]
    fn refuses_missing_or_foreign_headers() {
        let (mut headers, payload) = record("o-1");
        headers.retain(|(k, _)| *k != headers::REPLY_TO);
        assert!(
            matches!(decode(&headers, &payload), Err(DecodeError::MissingHeader(h)) if h == headers::REPLY_TO)
        );

        let (mut headers, payload) = record("o-1");
        headers[0].1 = headers::TYPE_ORDER_EVENT.as_bytes().to_vec();
        assert!(matches!(
            decode(&headers, &payload),
            Err(DecodeError::UnexpectedType(_))
        ));

        let (mut headers, payload) = record("o-1");
        headers[1].1 = b"2".to_vec();
        let error = decode(&headers, &payload).expect_err("future version");
        assert_eq!(
            error.to_string(),
            "schema version \"2\" is not supported (this SDK reads version 1)"
        );

        let (mut headers, payload) = record("o-1");
        headers[3].1 = vec![0xc3, 0x28];
        assert!(matches!(
            decode(&headers, &payload),
            Err(DecodeError::NotText(_))
        ));
    }

    #[test]
    fn refuses_a_correlation_id_naming_another_order() {
        let (mut headers, payload) = record("o-1");
        headers[2].1 = b"o-2".to_vec();
        assert!(matches!(
            decode(&headers, &payload),
            Err(DecodeError::CorrelationMismatch { .. })
        ));
    }
}
