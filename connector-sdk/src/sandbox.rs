//! Sandbox markers: order contents that make the example partners (and any adapter that
//! wants them in its sandbox) take each path on purpose, so demos and tests can show every
//! path deterministically — like a carrier sandbox's magic tracking numbers.
//!
//! Put the markers in the shipping address's second line (`line2`), any number of them:
//!
//! | marker | the example partner… |
//! | --- | --- |
//! | `[reject]` | rejects the order (`REJECTED_BY_PARTNER`, detail code `OUT_OF_AREA` or `NO_CAPACITY`) |
//! | `[reject:<partner id>]` | only that partner rejects it (the order is re-routed to the next matching partner, which accepts it) |
//! | `[fail-N]` | fails retryably on the first N calls for a delivery (N = 1…9), then accepts |
//! | `[timeout]` | hangs past the adapter timeout on the first call, then accepts |
//! | `[permanent]` | fails permanently: the order is set aside (dead-letter topic, inbox row) |
//! | `[out-of-order]` | (`local-express`) reports `DELIVERED` before `SHIPPED` |

use waybill_proto::v1::DispatchedOrder;

/// The markers an order carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxMarkers {
    /// `[reject]`.
    pub reject: bool,
    /// `[fail-N]`: how many calls fail first.
    pub fail_times: u32,
    /// `[timeout]`.
    pub timeout: bool,
    /// `[permanent]`.
    pub permanent: bool,
    /// `[out-of-order]`.
    pub out_of_order: bool,
}

impl SandboxMarkers {
    /// Reads the markers in `order`'s shipping address line 2.
    pub fn of(order: &DispatchedOrder) -> Self {
        order
            .ship_to
            .as_ref()
            .map_or_else(Self::default, |address| Self::parse(&address.line2))
    }

    /// Reads the markers in `order`'s shipping address line 2 as partner `partner_id` sees
    /// them: `[reject:<partner_id>]` counts as `[reject]`, another partner's does not.
    pub fn for_partner(order: &DispatchedOrder, partner_id: &str) -> Self {
        let line2 = order.ship_to.as_ref().map_or("", |a| a.line2.as_str());
        let mut markers = Self::parse(line2);
        markers.reject |= line2.contains(&format!("[reject:{partner_id}]"));
        markers
    }

    /// Reads the markers in `text`.
    pub fn parse(text: &str) -> Self {
        let fail_times = text
            .match_indices("[fail-")
            .filter_map(|(at, marker)| {
                let rest = &text[at + marker.len()..];
                let digit = rest.chars().next()?.to_digit(10)?;
                rest[1..].starts_with(']').then_some(digit)
            })
            .max()
            .unwrap_or(0);
        Self {
            reject: text.contains("[reject]"),
            fail_times,
            timeout: text.contains("[timeout]"),
            permanent: text.contains("[permanent]"),
            out_of_order: text.contains("[out-of-order]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_marker() {
        let markers = SandboxMarkers::parse("Apt 4 [fail-2] [out-of-order]");
        assert_eq!(markers.fail_times, 2);
        assert!(markers.out_of_order);
        assert!(!markers.reject && !markers.timeout && !markers.permanent);
        assert!(SandboxMarkers::parse("[reject]").reject);
        assert!(SandboxMarkers::parse("[timeout]").timeout);
        assert!(SandboxMarkers::parse("[permanent]").permanent);
        assert_eq!(
            SandboxMarkers::parse("plain address"),
            SandboxMarkers::default()
        );
        // A partner-specific rejection is that partner's only.
        let order = DispatchedOrder {
            ship_to: Some(waybill_proto::v1::Address {
                line2: "[reject:local-express]".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(SandboxMarkers::for_partner(&order, "local-express").reject);
        assert!(!SandboxMarkers::for_partner(&order, "distance-freight").reject);
        assert!(!SandboxMarkers::of(&order).reject);
        // Malformed markers are ignored.
        assert_eq!(
            SandboxMarkers::parse("[fail-x] [fail-12] [fail-").fail_times,
            0
        );
    }
}
