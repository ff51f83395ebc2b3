//! The whole Waybill system in one process, assembled once: Orders, the dispatcher and
//! StatusIngest on one database, with a Kafka-protocol broker (the embedded one or a given
//! cluster), StatusIngest's address as every order's reply-to, and each service's Prometheus
//! series in the registry it is given. `waybill dev`, `waybill demo` and `waybill bench e2e`
//! run it (with the example partners on top, in the command), and the integration tests'
//! `TestStack` starts it on a throw-away database and a test broker.
//!
//! ```no_run
//! # async fn run(database_url: String) -> Result<(), waybill_stack::StackError> {
//! use waybill_stack::{Broker, DispatcherSettings, IngestSettings, Stack, StackSettings};
//! let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
//! let mut settings = StackSettings::new(database_url, loopback);
//! settings.dispatcher = Some(DispatcherSettings::new(loopback, Broker::Embedded));
//! settings.status_ingest = Some(IngestSettings::new(loopback, "waybill"));
//! let stack = Stack::start(settings).await?;
//! // … place orders at stack.orders_addr …
//! stack.stop().await
//! # }
//! ```
//!
//! - [`StackSettings`]: what runs, where it listens, which broker, which registries.
//! - [`Stack`]: the running services. [`Stack::failure`] says when one stops by itself;
//!   [`Stack::stop_status_ingest`] and [`Stack::start_status_ingest`] take StatusIngest down
//!   and bring it back on the same address (the fault tests); [`Stack::stop`] stops everything
//!   and waits, and dropping a stack does the same (a stack is stopped by construction).
//! - [`StackError`]: what could not start, and which service failed.

mod error;
mod ingest;
mod listen;
mod services;
mod settings;
mod stack;

pub use error::StackError;
pub use settings::{Broker, DispatcherSettings, IngestSettings, StackMetrics, StackSettings};
pub use stack::Stack;
