//! W3C trace context carried by hand: the SDK installs no global propagator (that is the
//! partner program's choice), so it continues the order's `traceparent` itself — same trace
//! id, a new span id for the connector's own work, same flags — into the adapter's context
//! and into each report's gRPC metadata. One trace per order, whatever the partner's
//! telemetry set-up.

use rand::Rng;

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
