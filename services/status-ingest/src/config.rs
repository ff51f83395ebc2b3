//! Settings of `waybill status-ingest`: flags with environment fallbacks.

use std::{net::SocketAddr, time::Duration};

/// Settings of `waybill status-ingest`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusIngestArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "WAYBILL_LISTEN", default_value = "127.0.0.1:50053")]
    pub listen: SocketAddr,
    /// `postgres://user@host/db` in production, `sqlite://path.db` embedded.
    #[arg(
        long,
        env = "WAYBILL_DATABASE_URL",
        default_value = "sqlite://.waybill/waybill.db"
    )]
    pub database_url: String,
    /// This Waybill environment's name: report tokens must carry it as their audience (`aud`),
    /// so a token made for a sandbox is refused in production.
    #[arg(long, env = "WAYBILL_TOKEN_AUDIENCE", default_value = "waybill-local")]
    pub audience: String,
    /// Most database connections this service opens.
    #[arg(long, env = "WAYBILL_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// How often expired token ids are deleted from the replay guard and the counters logged,
    /// in seconds.
    #[arg(long, env = "WAYBILL_STATS_INTERVAL", default_value_t = 60)]
    pub stats_interval_secs: u64,
    /// TLS, the production guard and the per-partner-address ReportStatus rate limit. No
    /// credentials file is needed: partners prove who they are with signed report tokens.
    #[command(flatten)]
    pub security: waybill_service_kit::security::SecurityArgs,
    /// The Prometheus metrics listener (off by default).
    #[command(flatten)]
    pub metrics: waybill_service_kit::metrics::MetricsArgs,
}

impl StatusIngestArgs {
    /// The maintenance interval (at least one second).
    pub fn stats_interval(&self) -> Duration {
        Duration::from_secs(self.stats_interval_secs.max(1))
    }
}
