//! The Waybill connector SDK: what a shipping partner embeds in its adapter.
//!
//! This release contains the first building block, [`envelope`]: turning a Kafka record from
//! the partner's topic (headers + `DispatchedOrder` payload) into a checked [`IncomingOrder`],
//! or a [`DecodeError`] saying exactly why the record must be set aside. The consumer loop,
//! inbox de-duplication and signed status reports build on it in a later release.
//!
//! The SDK depends on the contracts only, never on Waybill's service code, and installs no
//! global subscribers or propagators: those are the adapter's choice.
#![warn(missing_docs)]

pub mod envelope;

pub use envelope::{DecodeError, IncomingOrder, decode_dispatched_order};
