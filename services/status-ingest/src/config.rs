//! Settings of `waybill status-ingest`: flags with environment fallbacks
//! ([`StatusIngestArgs`]), validated into a [`StatusIngestConfig`] before anything starts (the
//! dispatcher's and Orders' shape).

use std::{net::SocketAddr, time::Duration};

use waybill_service_kit::{
    config::{ConfigError, check_name, check_pool_size},
    duration::{format_duration, parse_duration},
    metrics::MetricsArgs,
    security::SecurityArgs,
};

/// Flags of `waybill status-ingest` (each with an environment fallback).
#[derive(Debug, Clone, clap::Args)]
pub struct StatusIngestArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "WAYBILL_LISTEN", default_value = "127.0.0.1:50053")]
    pub listen: SocketAddr,
    /// Where this service stores: `postgres://USER@HOST:5432/DB` in production (TLS with
    /// `?sslmode=verify-full&sslrootcert=CA.pem`, a client certificate with `&sslcert=…&sslkey=…`),
    /// `sqlite://PATH` on one machine. Required: nothing is stored anywhere unnamed.
    #[arg(long, env = "WAYBILL_DATABASE_URL")]
    pub database_url: Option<String>,
    /// This Waybill environment's name: report tokens must carry it as their audience (`aud`),
    /// so a token made for a sandbox is refused in production.
    #[arg(long, env = "WAYBILL_TOKEN_AUDIENCE", default_value = "waybill-local")]
    pub audience: String,
    /// Most database connections this service opens.
    #[arg(long, env = "WAYBILL_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Whether this service applies pending migrations at start.
    #[command(flatten)]
    pub schema: waybill_service_kit::db::SchemaArgs,
    /// How often expired token ids are deleted from the replay guard and the counters logged
    /// (at least 1s).
    #[arg(long, env = "WAYBILL_STATS_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub stats_interval: Duration,
    /// TLS, the production guard and the per-partner-address ReportStatus rate limit. No
    /// credentials file is needed: partners prove who they are with signed report tokens.
    #[command(flatten)]
    pub security: SecurityArgs,
    /// The Prometheus metrics listener (off by default).
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// Validated settings of one StatusIngest.
#[derive(Debug, Clone)]
pub struct StatusIngestConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Database URL.
    pub database_url: String,
    /// Database pool size.
    pub db_max_connections: u32,
    /// What start-up does with the schema (migrate, or require it current).
    pub schema: waybill_service_kit::db::SchemaPolicy,
    /// The audience report tokens must name.
    pub audience: String,
    /// How often expired token ids are deleted and the counters logged.
    pub stats_interval: Duration,
    /// Listener security (loaded, with its files, when the service starts).
    pub security: SecurityArgs,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics: MetricsArgs,
}

/// The shortest `--stats-interval`: purging and logging more often only loads the database.
pub const MIN_STATS_INTERVAL: Duration = Duration::from_secs(1);

impl StatusIngestArgs {
    /// Validates the flags.
    pub fn into_config(self) -> Result<StatusIngestConfig, ConfigError> {
        let config = StatusIngestConfig {
            listen: self.listen,
            database_url: waybill_service_kit::config::require_database_url(self.database_url)?,
            db_max_connections: self.db_max_connections,
            schema: self.schema.policy(),
            audience: self.audience,
            stats_interval: self.stats_interval,
            security: self.security,
            metrics: self.metrics,
        };
        config.validate()?;
        Ok(config)
    }
}

impl StatusIngestConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_pool_size(self.db_max_connections)?;
        check_name("--audience", &self.audience)?;
        if self.stats_interval < MIN_STATS_INTERVAL {
            return Err(ConfigError::new(
                "--stats-interval",
                format!(
                    "must be at least {}, got {}",
                    format_duration(MIN_STATS_INTERVAL),
                    format_duration(self.stats_interval)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: StatusIngestArgs,
    }

    fn config(flags: &[&str]) -> Result<StatusIngestConfig, ConfigError> {
        let argv = ["x", "--database-url", "sqlite://unused.db"]
            .into_iter()
            .chain(flags.iter().copied());
        Cli::try_parse_from(argv).expect("parse").args.into_config()
    }

    #[test]
    fn a_database_url_is_required() {
        let args = Cli::try_parse_from(["x"]).expect("parse").args;
        if std::env::var_os("WAYBILL_DATABASE_URL").is_none() {
            let error = args.into_config().expect_err("no database url");
            assert_eq!(error.flag, "--database-url");
        }
    }

    #[test]
    fn defaults_are_valid() {
        let config = config(&[]).expect("valid");
        assert_eq!(config.listen.port(), 50053);
        assert_eq!(config.audience, "waybill-local");
        assert_eq!(config.stats_interval, Duration::from_secs(60));
    }

    #[test]
    fn reads_the_stats_interval_as_the_dispatcher_does() {
        let config = config(&["--stats-interval", "90s"]).expect("valid");
        assert_eq!(config.stats_interval, Duration::from_secs(90));
        let config = self::config(&["--stats-interval", "2m"]).expect("valid");
        assert_eq!(config.stats_interval, Duration::from_secs(120));
        assert!(
            Cli::try_parse_from(["x", "--stats-interval", "60"]).is_err(),
            "a duration needs its unit"
        );
    }

    #[test]
    fn refuses_a_stats_interval_under_a_second() {
        let error = config(&["--stats-interval", "500ms"]).expect_err("too short");
        assert_eq!(error.flag, "--stats-interval");
        assert_eq!(
            error.to_string(),
            "invalid setting --stats-interval: must be at least 1s, got 500ms"
        );
    }

    #[test]
    fn refuses_a_blank_audience() {
        assert_eq!(
            config(&["--audience", ""]).expect_err("blank").flag,
            "--audience"
        );
    }
}
