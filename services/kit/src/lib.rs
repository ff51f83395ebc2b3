//! What every Waybill service needs alike, and nothing more: logic belongs to the service that
//! owns it.
//!
//! - [`db`]: connecting to Postgres or SQLite from one URL, the embedded migrations of the
//!   shared schema (`migrations/postgres`, `migrations/sqlite`), and the change feed that wakes
//!   watchers and the dispatcher.
//! - [`telemetry`]: structured logs, OpenTelemetry traces over OTLP, W3C trace-context helpers.
//! - [`grpc`]: serving a tonic router with the health and reflection services and a graceful
//!   drain.
//! - [`run`]: starting a service alike everywhere — binding the listener (an error naming the
//!   address), connecting, the metrics endpoint beside the server — and [`run::RunError`], what
//!   every service can stop with.
//! - [`config`]: the typed error of a refused setting ([`config::ConfigError`]) and the checks
//!   every service's settings share; [`duration`]: the `250ms`/`30s`/`10m` notation of
//!   duration settings.
//! - [`metrics`]: Prometheus metrics (series registries, refreshers run at scrape time, the
//!   `/metrics` HTTP endpoint turned on by `--metrics-listen`).
//! - [`text`]: the one text-field checker (length, control characters) and the one way to
//!   quote caller input in an error message, used by every RPC of every service.
//! - [`page_token`]: page tokens authenticated with HMAC-SHA256 under a shared server key.
//! - [`secrets`]: reading key files whose permissions are checked.
//! - [`security`]: TLS (mTLS optional, reload on SIGHUP), the caller-identity layer shared by
//!   every service (roles, audit trail), per-caller rate limits, and the production guard.
//! - `kafka` and `kafka_log` (feature `kafka`): the `waybill-kafka-client` crate's `settings`
//!   (refusing Kafka client settings the build cannot honour) and `log` (librdkafka's lines
//!   once per change), re-exported for the services that speak Kafka.
//! - [`shutdown`]: SIGINT/SIGTERM to a `CancellationToken`.
//! - [`clock`]: the time source, controllable in tests.
//!
//! Test helpers (throw-away databases, fixtures, a test PKI) are in the `waybill-test-kit`
//! crate, a dev-dependency only.

pub mod clock;
pub mod config;
pub mod db;
pub mod duration;
pub mod grpc;
pub mod in_flight;
#[cfg(feature = "kafka")]
pub use waybill_kafka_client::log as kafka_log;
#[cfg(feature = "kafka")]
pub use waybill_kafka_client::settings as kafka;
pub mod metrics;
pub mod page_token;
pub mod process_metrics;
pub mod rpc_metrics;
pub mod run;
pub mod secrets;
pub mod security;
pub mod shutdown;
pub mod telemetry;
pub mod text;
