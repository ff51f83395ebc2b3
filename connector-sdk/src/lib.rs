//! The Waybill connector SDK: what a shipping partner embeds to receive Waybill's orders and
//! report back. The partner writes one trait implementation, [`TransportPartner`]; the SDK
//! does the rest — consume the partner's topic on every Waybill region's Kafka cluster,
//! de-duplicate in a durable inbox, call the adapter once per order in effect, sign and send
//! the status reports to the StatusIngest address each order carried, set bad records aside,
//! commit offsets only when the work is safe.
//!
//! The wire details it meets for you — the topic, key and headers, the schema-version and
//! correlation-id rules, the consumer group and where it starts, when offsets are committed,
//! `ReportStatus` and every claim of its token, every refusal and what to do about it — are the
//! partner contract, `docs/partners.md` in Waybill's repository, written for partners in any
//! language; read it to know what the SDK promises on the wire, or to debug an exchange.
//!
//! # From nothing to a running adapter
//!
//! **1. A key.** Reports are signed with the partner's Ed25519 key (a JWT, `alg: EdDSA`):
//!
//! ```text
//! waybill keys generate --partner acme --key-id acme-2026     # writes acme-2026.pem (+ .pub.pem)
//! # or: openssl genpkey -algorithm ed25519 -out acme-2026.pem
//! ```
//!
//! **2. Enrolment.** A Waybill operator enrols the partner (which creates its topic
//! `waybill.partner.acme`), its routes and its public key through `DispatchAdmin`:
//! `EnrollPartner`, `SetRoute`, `AddPartnerKey{partner_id, key_id, public_key}` (the raw 32
//! bytes: [`ReportSigningKey::public_key`], or what `waybill keys generate` prints). Rotation:
//! enrol a second key, restart the connector with it, revoke the first.
//!
//! **3. The trait.** One async method, called once per order in effect. Statuses the partner
//! already knows when it answers (`SHIPPED` at the next round) go with the answer
//! ([`Acceptance::then_report`]): stored in the inbox with it, sent when due, across crashes.
//! Statuses its system learns of later go through a [`StatusReporter`] from anywhere in the
//! program:
//!
//! ```no_run
//! use std::time::Duration;
//! use waybill_connector_sdk::{
//!     Acceptance, ClusterConfig, Connector, PartnerError, ReportSigningKey, ShipmentContext,
//!     StatusUpdate, TransportPartner, proto::DispatchedOrder,
//! };
//!
//! struct Acme;
//!
//! impl TransportPartner for Acme {
//!     async fn request_shipment(&self, order: &DispatchedOrder, ctx: &ShipmentContext)
//!         -> Result<Acceptance, PartnerError> {
//!         // Create the shipment in Acme's own system, keyed by ctx.idempotency_key(): the
//!         // same key gets the same shipment, and the same tracking id, back.
//!         let tracking_id = book_shipment(order, ctx.idempotency_key()).await?;
//!         // Known now, reported in four hours: durably, not from a timer in memory.
//!         Ok(Acceptance::accepted(tracking_id)
//!             .then_report(StatusUpdate::shipped(), Duration::from_secs(4 * 3600)))
//!     }
//! }
//! # async fn book_shipment(_: &DispatchedOrder, key: &str) -> Result<String, PartnerError> {
//! #     Ok(key.to_owned())
//! # }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let connector = Connector::builder("acme")
//!         .cluster(ClusterConfig::new("eu", "kafka.eu.example:9092"))
//!         .signing_key(ReportSigningKey::from_pem_file("acme-2026.pem", "acme-2026")?)
//!         .audience("waybill-production")
//!         .inbox_path("/var/lib/acme/waybill-inbox.db")
//!         .build()
//!         .await?;
//!     // Statuses Acme's system learns of later (a depot scan, a delivery), from wherever
//!     // they arrive: reporter.report(&order_id, StatusUpdate::delivered()).await
//!     let _reporter = connector.reporter();
//!     let shutdown = tokio_util::sync::CancellationToken::new();
//!     let on_signal = shutdown.clone();
//!     tokio::spawn(async move { let _ = tokio::signal::ctrl_c().await; on_signal.cancel(); });
//!     connector.run(Acme, shutdown).await?;
//!     Ok(())
//! }
//! ```
//!
//! **4. Running.** One process is enough; for more, run several with the same partner id:
//! they form one consumer group per cluster and share the partitions — give them one
//! Postgres inbox ([`ConnectorBuilder::inbox_url`] with `postgres://…`) so an instance taking
//! over a partition knows what the other did. Several regions: add one [`ClusterConfig`] per
//! region; each order is answered at the reply-to address it carried. Programs configured by
//! environment use [`ConnectorBuilder::from_env`] (the variables are in [`config`]). Two
//! complete example partners are in `examples` (cargo feature `examples`), with [`sandbox`]
//! markers that trigger every path; `connector-sdk/examples/` runs each as a program of its own
//! (`cargo run -p waybill-connector-sdk --features examples --example local-express`), and
//! `waybill partner local-express` runs one from the `waybill` binary.
//!
//! # What the SDK guarantees
//!
//! - **Once in effect.** Each order id is recorded in the durable inbox before the adapter is
//!   called; the adapter's answer is stored (with the report that says it) before it is
//!   reported. A redelivered order — broker redelivery, producer duplicate, resend after the
//!   handover deadline, restart before commit — is answered from the inbox and never handed
//!   to the adapter again; its report is re-sent if it was never confirmed.
//! - **Later statuses survive a crash.** Reports an answer schedules
//!   ([`Acceptance::then_report`]) are stored in the answer's transaction, each due after its
//!   delay, and sent when due — after a restart too. A report through
//!   [`StatusReporter::report`] is durable once the call returns.
//! - **Reports land.** Each report is signed with a fresh token per attempt (same report id,
//!   so a retry is a duplicate, not a replay), retried with exponential backoff and jitter
//!   while StatusIngest is unreachable, kept across restarts; `duplicate = true` counts as
//!   success. Acceptance reports have deterministic ids (`<order id>:RECEIVED_BY_PARTNER`), so
//!   two instances answering the same order send one event.
//! - **Nothing stalls.** Records are decoded inside the SDK: one that is not a valid order is
//!   set aside (the partner's dead-letter topic `<topic>.dead-letter` and an inbox row with
//!   the reason, counted and logged) and the partition moves on. A retryable adapter error
//!   retries that order with backoff; other orders keep flowing (records of one order id run
//!   in order, one at a time). A stuck call times out.
//! - **Offsets are safe.** Committed only up to the point below which every record is safe;
//!   on revocation in-flight orders get a bounded time to finish, late finishers are fenced.
//! - **One trace per order.** The record's `traceparent` continues into the adapter's
//!   [`ShipmentContext::traceparent`] and into each report's gRPC metadata. The SDK installs
//!   no global subscriber or propagator: logs and spans go through `tracing`, to whatever the
//!   partner's program set up. With a `tracing-opentelemetry` layer installed, the connector's
//!   span for the order (`waybill.connector.order`) is exported as the child of the relay's
//!   dispatch span and the parent of the adapter's spans and of the reports' server spans.
//! - **Metrics.** [`metrics::ConnectorHealth::register_metrics`] registers the connector's
//!   Prometheus series (counters, partition lag, inbox counts, placed → acknowledged latency)
//!   in a [`prometheus_client`] registry the partner's program passes (with the prefix
//!   [`metrics::METRICS_PREFIX`]: `waybill_connector_*`), and returns the inbox gauges to
//!   refresh before each scrape; the program serves the registry on a port its scraper
//!   reaches. The SDK brings no HTTP server or registry of its own:
//!
//!   ```no_run
//!   # async fn metrics(connector: &waybill_connector_sdk::Connector) -> Result<String, std::fmt::Error> {
//!   use prometheus_client::{encoding::text::encode, registry::Registry};
//!   use waybill_connector_sdk::metrics::METRICS_PREFIX;
//!
//!   let mut registry = Registry::default();
//!   let inbox = connector
//!       .health()
//!       .register_metrics(registry.sub_registry_with_prefix(METRICS_PREFIX));
//!   // In the program's `GET /metrics` handler:
//!   inbox.refresh().await;
//!   let mut body = String::new();
//!   encode(&mut body, &registry)?;
//!   # Ok(body) }
//!   ```
//! - **Errors say whether to retry.** [`ConnectorError`], [`ReportError`], [`PartnerError`]
//!   and [`inbox::InboxError`] are enums with an `is_retryable()`: only an inbox that could not
//!   be reached for a moment is worth another try.
//! - **Time is injected.** Every decision in time — when a report is due again, each report
//!   token's issue time, the inbox's time stamps and retention, the latency figure — reads the
//!   [`clock::Clock`] set with [`ConnectorBuilder::clock`] (the system's by default), so a test
//!   moves a [`clock::ManualClock`] instead of waiting.
//!
//! # What the adapter must guarantee
//!
//! **Idempotency on the order id** ([`ShipmentContext::idempotency_key`]). If the process
//! dies after the adapter's call reached the partner's system but before the answer was
//! stored, or the call timed out, the SDK calls again with the same key; answer the same way
//! (same tracking id) both times. A tracking id made up from the order id must come from all
//! of it (a digest, as `examples::tracking_id` makes them), never from its first
//! characters: order ids are UUIDv7s, whose first twelve digits are the millisecond they were
//! made in. Never keep a status to report in a timer or a task of the process only: it dies
//! with the process, and the redelivered order is answered from the inbox without the adapter.
//! And return promptly or within
//! [`ConnectorBuilder::adapter_timeout`]; block on nothing the SDK waits for.
//!
//! # Layout
//!
//! [`partner`] (the trait and its types), [`status`] (later reports), [`signing`] (keys),
//! [`config`] (builder and environment), [`connector`] (running), [`error`] (why it could not
//! start), [`clock`] (the time source), [`inbox`] (the durable inbox: trait, SQLite and
//! Postgres), [`metrics`] (health and counters), [`envelope`] (checked decoding of a record),
//! [`sandbox`] (example markers), `consumer` (the poll thread: its module doc says why a
//! `BaseConsumer`), `worker` (one record's work), `delivery` (sending reports), [`domain`]
//! (pure decisions, unit-tested on a manual clock: what to do with a record and with a
//! report's answer, when a report is due again, when the pipeline overflows to the inbox,
//! commit watermark, lanes, backoff), [`trace`] (W3C trace context). Modules import one
//! another directly, never through this root's re-exports, so no module imports one that
//! imports it back.
#![warn(missing_docs)]

mod batching;
pub mod clock;
pub mod config;
pub mod connector;
mod consumer;
mod delivery;
pub mod domain;
pub mod envelope;
pub mod error;
#[cfg(feature = "examples")]
pub mod examples;
pub mod inbox;
pub mod metrics;
pub mod observe;
pub mod partner;
pub mod sandbox;
pub mod signing;
pub mod status;
pub mod trace;
mod worker;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{ClusterConfig, ConnectorBuilder};
pub use connector::Connector;
pub use envelope::{DecodeError, IncomingOrder, decode_dispatched_order};
pub use error::{ConfigError, ConnectorError};
pub use observe::{PipelineObserver, Step};
pub use partner::{Acceptance, LaterReport, PartnerError, ShipmentContext, TransportPartner};
pub use signing::ReportSigningKey;
pub use status::{PartnerStatus, ReportError, StatusReporter, StatusUpdate};
pub use worker::{DEAD_LETTER_ORIGIN, DEAD_LETTER_REASON};

/// The contracts' messages an adapter sees (`DispatchedOrder`, `Address`, …).
pub mod proto {
    pub use waybill_proto::v1::{Address, DispatchedOrder, Money, OrderLine, Recipient};
}
