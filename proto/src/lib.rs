//! Waybill's contracts: every gRPC service and Kafka payload of package `waybill.v1`.
//!
//! - [`v1`]: the prost messages and the tonic clients and servers, generated at build time from
//!   `proto/waybill/v1/*.proto` with a vendored `protoc`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.
//! - [`headers`]: the Kafka header names every producer and consumer agrees on.
//! - [`limits`]: bounds a server enforces and its clients size their calls by.
//! - [`outbox`]: the partner message (`DispatchedOrder`) as stored in the outbox, sent with its
//!   per-send fields, read for routing and received: one owner for its bytes.
//! - [`history`]: the history event (`OrderStatusEvent`) as Orders shows it and the
//!   order-events topic carries it: one encoder.
//! - [`status`]: where an order stands given its history (StatusIngest and Orders both).
//! - [`time`]: conversions between protobuf timestamps and `chrono`.
//!
//! This crate depends on nothing of ours; everything else depends on it.

pub mod headers;
pub mod history;
pub mod limits;
pub mod outbox;
pub mod status;
#[cfg(test)]
mod test_support;
pub mod time;

/// Generated code of package `waybill.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("waybill.v1");

    impl OrderStatus {
        /// The short upper-case name used in the database, logs and Kafka headers: `PLACED`,
        /// `SENT_TO_PARTNER`, … (the proto name without its `ORDER_STATUS_` prefix).
        pub fn short_name(self) -> &'static str {
            self.as_str_name()
                .strip_prefix("ORDER_STATUS_")
                .unwrap_or("UNSPECIFIED")
        }

        /// The inverse of [`OrderStatus::short_name`]; `None` for an unknown name.
        pub fn from_short_name(name: &str) -> Option<Self> {
            match Self::from_str_name(&format!("ORDER_STATUS_{name}"))? {
                Self::Unspecified => None,
                status => Some(status),
            }
        }
    }

    impl DispatchState {
        /// The short upper-case name used in the database and logs: `PENDING`, `DEAD`, …
        pub fn short_name(self) -> &'static str {
            self.as_str_name()
                .strip_prefix("DISPATCH_STATE_")
                .unwrap_or("UNSPECIFIED")
        }

        /// The inverse of [`DispatchState::short_name`]; `None` for an unknown name.
        pub fn from_short_name(name: &str) -> Option<Self> {
            match Self::from_str_name(&format!("DISPATCH_STATE_{name}"))? {
                Self::Unspecified => None,
                state => Some(state),
            }
        }
    }
}

/// The encoded `FileDescriptorSet` of every `waybill.v1` file, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("waybill_descriptor");

#[cfg(test)]
mod tests {
    use super::v1::{DispatchState, OrderStatus};

    #[test]
    fn status_short_names_round_trip() {
        for status in [
            OrderStatus::Placed,
            OrderStatus::SentToPartner,
            OrderStatus::ReceivedByPartner,
            OrderStatus::Shipped,
            OrderStatus::Delivered,
            OrderStatus::Exception,
            OrderStatus::RejectedByPartner,
        ] {
            assert_eq!(
                OrderStatus::from_short_name(status.short_name()),
                Some(status)
            );
        }
        assert_eq!(OrderStatus::Placed.short_name(), "PLACED");
        assert_eq!(OrderStatus::from_short_name("UNSPECIFIED"), None);
        assert_eq!(OrderStatus::from_short_name("placed"), None);
    }

    #[test]
    fn dispatch_state_short_names_round_trip() {
        for state in [
            DispatchState::Pending,
            DispatchState::Retrying,
            DispatchState::Sent,
            DispatchState::Acknowledged,
            DispatchState::Dead,
            DispatchState::Unroutable,
            DispatchState::Unacknowledged,
        ] {
            assert_eq!(
                DispatchState::from_short_name(state.short_name()),
                Some(state)
            );
        }
    }

    #[test]
    fn descriptor_set_names_every_service() {
        let text = String::from_utf8_lossy(super::FILE_DESCRIPTOR_SET);
        for service in [
            "OrderService",
            "CatalogService",
            "StatusIngest",
            "DispatchAdmin",
        ] {
            assert!(
                text.contains(service),
                "{service} missing from descriptor set"
            );
        }
    }
}
