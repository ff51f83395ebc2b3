//! W3C trace context carried by hand: the SDK installs no global propagator (that is the
//! partner program's choice), so it continues the order's `traceparent` itself — same trace
//! id, a new span id for the connector's own work, same flags — into the adapter's context
//! and into each report's gRPC metadata. One trace per order, whatever the partner's
//! telemetry set-up.
//!
//! When the partner program exports spans (a `tracing-opentelemetry` layer on its
//! subscriber), the connector's span for the order is an OpenTelemetry span whose parent is the
//! relay's dispatch span, and the span id carried on is that span's own, so a trace backend
//! shows place → dispatch → connector → report with every parent present. Without such a
//! layer, the span id is a fresh random one and only the trace id links the parts.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use rand::Rng;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Makes `parent` (the record's `traceparent`) the parent of `span` and returns the
/// `traceparent` that continues from `span`: its own context when it is an OpenTelemetry span
/// in the same trace, else [`continue_trace`] of `parent`.
pub(crate) fn continue_in_span(span: &tracing::Span, parent: Option<&str>) -> Option<String> {
    let parsed = parent.and_then(parse);
    if let Some(remote) = &parsed {
        let context = opentelemetry::Context::new().with_remote_span_context(remote.clone());
        // Fails only when the span is disabled or not an OpenTelemetry span: then the hand-made
        // continuation below carries the trace.
        let _ = span.set_parent(context);
    }
    let own = span.context().span().span_context().clone();
    match &parsed {
        Some(remote) if own.is_valid() && own.trace_id() == remote.trace_id() => Some(format!(
            "00-{}-{}-{:02x}",
            own.trace_id(),
            own.span_id(),
            own.trace_flags().to_u8()
        )),
        _ => continue_trace(parent),
    }
}

/// A valid version-00 `traceparent` as a remote span context.
fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (Some("00"), Some(trace_id), Some(span_id), Some(flags), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(trace_id, 32) || !lower_hex(span_id, 16) || !lower_hex(flags, 2) {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// A `traceparent` that continues `parent` with a fresh span id, or `None` when `parent` is
/// absent or not a valid version-00 `traceparent` (a malformed header is dropped, not
/// propagated).
pub fn continue_trace(parent: Option<&str>) -> Option<String> {
    let parent = parent?.trim();
    let mut parts = parent.split('-');
    let (Some(version), Some(trace_id), Some(span_id), Some(flags), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if version != "00"
        || !hex(trace_id, 32)
        || !hex(span_id, 16)
        || !hex(flags, 2)
        || trace_id.bytes().all(|b| b == b'0')
    {
        return None;
    }
    let span: u64 = rand::rng().random_range(1..=u64::MAX);
    Some(format!("00-{trace_id}-{span:016x}-{flags}"))
}

/// The trace id of a `traceparent`, for log fields.
pub fn trace_id(traceparent: Option<&str>) -> Option<&str> {
    traceparent?.split('-').nth(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_the_trace_with_a_new_span() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = continue_trace(Some(parent)).expect("valid");
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.ends_with("-01"));
        assert_ne!(child, parent);
        assert_eq!(child.len(), parent.len());
        assert_eq!(
            trace_id(Some(&child)),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[test]
    fn without_an_opentelemetry_layer_the_span_id_is_made_by_hand() {
        // No subscriber here: the span is disabled and has no OpenTelemetry context.
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = tracing::info_span!("test");
        let child = continue_in_span(&span, Some(parent)).expect("continued");
        assert_eq!(
            trace_id(Some(&child)),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_ne!(child, parent);
        assert_eq!(continue_in_span(&span, Some("garbage")), None);
        assert_eq!(continue_in_span(&span, None), None);
    }

    #[test]
    fn parses_only_valid_version_00_contexts() {
        let parsed =
            parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
        assert_eq!(
            parsed.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parsed.span_id().to_string(), "00f067aa0ba902b7");
        assert!(parsed.is_sampled() && parsed.is_remote());
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn drops_malformed_headers() {
        for bad in [
            "",
            "garbage",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(continue_trace(Some(bad)), None, "{bad}");
        }
        assert_eq!(continue_trace(None), None);
    }
}
