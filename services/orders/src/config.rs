//! Settings of `waybill orders`: flags with environment fallbacks ([`OrdersArgs`]), validated
//! into an [`OrdersConfig`] before anything starts (the dispatcher's and StatusIngest's shape).

use std::{net::SocketAddr, time::Duration};

use waybill_service_kit::{
    config::{ConfigError, check_name, check_pool_size},
    duration::parse_duration,
    metrics::MetricsArgs,
    page_token::PageTokenArgs,
    security::SecurityArgs,
};

/// Flags of `waybill orders` (each with an environment fallback).
#[derive(Debug, Clone, clap::Args)]
pub struct OrdersArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "WAYBILL_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Where this service stores: `postgres://USER@HOST:5432/DB` in production (TLS with
    /// `?sslmode=verify-full&sslrootcert=CA.pem`, a client certificate with `&sslcert=…&sslkey=…`),
    /// `sqlite://PATH` on one machine. Required: nothing is stored anywhere unnamed.
    #[arg(long, env = "WAYBILL_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Name of this Waybill region, stamped on every order.
    #[arg(long, env = "WAYBILL_REGION", default_value = "local")]
    pub region: String,
    /// Load the sample catalog (`services/orders/seed/catalog.sql`) at start-up.
    #[arg(long, env = "WAYBILL_SEED_CATALOG")]
    pub seed_catalog: bool,
    /// Most database connections this service opens.
    #[arg(long, env = "WAYBILL_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Whether this service applies pending migrations at start.
    #[command(flatten)]
    pub schema: waybill_service_kit::db::SchemaArgs,
    /// How long a catalog entry read for an order is used for the next ones: a price change
    /// applies to orders placed up to this much later (`0s`: the catalog is read every time).
    #[arg(long, env = "WAYBILL_CATALOG_CACHE", default_value = "1s", value_parser = parse_duration)]
    pub catalog_cache: Duration,
    /// Page-token key.
    #[command(flatten)]
    pub page_tokens: PageTokenArgs,
    /// The Prometheus metrics listener (off by default).
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// TLS, credentials and rate limits.
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// Validated settings of one Orders service.
#[derive(Debug, Clone)]
pub struct OrdersConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Database URL.
    pub database_url: String,
    /// Database pool size.
    pub db_max_connections: u32,
    /// What start-up does with the schema (migrate, or require it current).
    pub schema: waybill_service_kit::db::SchemaPolicy,
    /// Region stamped on new orders.
    pub region: String,
    /// Whether the sample catalog is loaded at start-up.
    pub seed_catalog: bool,
    /// How long a catalog entry is used.
    pub catalog_cache: Duration,
    /// The page-token key (read, with its file, when the service starts).
    pub page_tokens: PageTokenArgs,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics: MetricsArgs,
    /// Listener security (loaded, with its files, when the service starts).
    pub security: SecurityArgs,
}

impl OrdersArgs {
    /// Validates the flags.
    pub fn into_config(self) -> Result<OrdersConfig, ConfigError> {
        let config = OrdersConfig {
            listen: self.listen,
            database_url: waybill_service_kit::config::require_database_url(self.database_url)?,
            db_max_connections: self.db_max_connections,
            schema: self.schema.policy(),
            region: self.region,
            seed_catalog: self.seed_catalog,
            catalog_cache: self.catalog_cache,
            page_tokens: self.page_tokens,
            metrics: self.metrics,
            security: self.security,
        };
        config.validate()?;
        Ok(config)
    }
}

impl OrdersConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_pool_size(self.db_max_connections)?;
        check_name("--region", &self.region)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: OrdersArgs,
    }

    fn config(flags: &[&str]) -> Result<OrdersConfig, ConfigError> {
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
        assert_eq!(config.listen.port(), 50051);
        assert_eq!(config.region, "local");
        assert_eq!(config.db_max_connections, 16);
        assert_eq!(config.catalog_cache, crate::DEFAULT_CATALOG_CACHE);
    }

    #[test]
    fn reads_the_catalog_cache_lifetime_and_zero_turns_it_off() {
        let short = config(&["--catalog-cache", "250ms"]).expect("valid");
        assert_eq!(short.catalog_cache, Duration::from_millis(250));
        let off = config(&["--catalog-cache", "0s"]).expect("valid");
        assert_eq!(off.catalog_cache, Duration::ZERO);
    }

    #[test]
    fn refuses_a_blank_region_naming_the_flag() {
        let error = config(&["--region", " "]).expect_err("blank");
        assert_eq!(error.flag, "--region");
    }

    #[test]
    fn refuses_an_empty_pool() {
        let error = config(&["--db-max-connections", "0"]).expect_err("empty pool");
        assert_eq!(error.flag, "--db-max-connections");
    }

    #[test]
    fn the_bound_on_calls_in_flight_reaches_the_server_limits_and_zero_is_refused() {
        use waybill_service_kit::{grpc::ServerLimits, security::ServerSecurity};
        let default = config(&[]).expect("valid");
        let limits = ServerLimits::from_args(&default.security, ServerSecurity::default());
        assert_eq!(limits.concurrency_total, 1024);
        assert_eq!(limits.concurrency_per_connection, 256);
        let set = config(&["--max-calls-in-flight", "64"]).expect("valid");
        let limits = ServerLimits::from_args(&set.security, ServerSecurity::default());
        assert_eq!(limits.concurrency_total, 64);
        assert!(
            Cli::try_parse_from(["x", "--max-calls-in-flight", "0"]).is_err(),
            "no call could ever be served"
        );
    }
}
