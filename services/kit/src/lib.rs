//! What every Waybill service needs alike, and nothing more: logic belongs to the service that
//! owns it.
//!
//! - [`db`]: connecting to Postgres or SQLite from one URL, the embedded migrations of the
//!   shared schema (`migrations/postgres`, `migrations/sqlite`), and the change feed that wakes
//!   watchers and the dispatcher.
//! - [`telemetry`]: structured logs, OpenTelemetry traces over OTLP, W3C trace-context helpers.
//! - [`grpc`]: serving a tonic router with the health and reflection services and a graceful
//!   drain.
//! - [`shutdown`]: SIGINT/SIGTERM to a `CancellationToken`.
//! - [`clock`]: the time source, controllable in tests.
//! - `testing` (feature `testing`): throw-away databases for tests.

pub mod clock;
pub mod db;
pub mod grpc;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
