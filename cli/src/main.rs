//! `waybill`: the front door. One binary runs any one service for production
//! (`waybill orders`), everything at once on embedded storage (`waybill dev`), demos and
//! benchmarks. Each subcommand lives in its own module; this file only parses flags, sets up
//! telemetry and maps failures to exit codes.

mod admin;
mod bench;
mod catalog;
mod demo;
mod dev;
mod health;
mod memory;
mod migrate;
mod partner;
mod partner_check;
mod sidecar;
mod system;
mod token;

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use waybill_service_kit::{shutdown, telemetry};

/// Exit status for a configuration error (EX_CONFIG-ish usage error, sysexits.h 64).
const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "waybill",
    version,
    about = "Gets every online order to its shipping partner, exactly once in effect"
)]
struct Cli {
    /// Log format on stderr (`RUST_LOG` sets the level; `OTEL_EXPORTER_OTLP_ENDPOINT` turns on
    /// trace export).
    #[arg(
        long,
        env = "WAYBILL_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    log_format: telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service in one process on embedded storage (SQLite), for a first run and
    /// for trying things with grpcurl. Prints its endpoints; ctrl-c stops it.
    Dev(dev::DevArgs),
    /// Run the whole system in one process (temporary storage, embedded broker, both example
    /// partners), place sample orders and print each order's journey; exits 0 only if every
    /// routable order was acknowledged by its partner.
    Demo(demo::DemoArgs),
    /// Run one example partner's connector (`local-express` or `distance-freight`) as a
    /// process of its own, against a running Waybill.
    Partner(partner::PartnerArgs),
    /// Check a partner's adapter against the contract before going live: plays Waybill's side
    /// (broker, StatusIngest), attacks the adapter, prints a verdict per scenario (docs/partners.md).
    PartnerCheck(partner_check::PartnerCheckArgs),
    /// Run the connector as a sidecar for a partner's own service in any language: it hands
    /// each order to the service's `waybill.v1.PartnerAdapter` and takes later statuses on
    /// `waybill.v1.PartnerReports`, with the connector's guarantees.
    Sidecar(sidecar::SidecarArgs),
    /// Run the Orders service (PlaceOrder, GetOrder, ListOrders, WatchOrder).
    Orders(waybill_orders::OrdersArgs),
    /// Run the dispatcher: the relay from the outbox to the partners' Kafka topics, and the
    /// DispatchAdmin API for operators.
    Dispatcher(Box<waybill_dispatcher::DispatcherArgs>),
    /// Run StatusIngest: partners' signed status reports onto the orders (ReportStatus).
    StatusIngest(waybill_status_ingest::StatusIngestArgs),
    /// Load and latency figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Sign a partner status-report token (for calling ReportStatus with grpcurl), or check
    /// one and explain which check fails.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Partners' signing keys: generate a key pair and print the `waybill admin keys add`
    /// command that enrols it.
    #[command(subcommand)]
    Keys(token::KeysCommand),
    /// Ask one listener's gRPC health service (for container health checks): exits 0 when
    /// SERVING.
    Health(health::HealthArgs),
    /// The catalog PlaceOrder prices from: import a CSV or JSON-lines file, list, upsert,
    /// retire (the same command as `waybill admin catalog`).
    Catalog(admin::catalog::CatalogArgs),
    /// The operator's jobs, one command each, over the services' RPCs: dispatches, partners,
    /// routes, keys, catalog, relay and report stats. Tables, or `--json`; exits 64 on a usage
    /// error, 1 when the service refuses, 69 when it cannot be reached.
    Admin(admin::AdminArgs),
    /// Apply the database's pending migrations, or with `--check` say where the schema stands
    /// (exit 0 current, 3 pending): for deployments that upgrade the schema as a step of its own
    /// and start the services with `--migrate-on-start false`.
    Migrate(migrate::MigrateArgs),
}

fn main() -> ExitCode {
    memory::tune_malloc();
    let cli = Cli::parse();
    let service_name = match &cli.command {
        Command::Orders(_) => "waybill-orders",
        Command::Dispatcher(_) => "waybill-dispatcher",
        Command::StatusIngest(_) => "waybill-status-ingest",
        Command::Partner(_) => "waybill-partner",
        Command::Sidecar(_) => "waybill-sidecar",
        _ => "waybill",
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if matches!(
        cli.command,
        Command::Demo(_) | Command::PartnerCheck(_) | Command::Bench(bench::BenchCommand::E2e(_))
    ) {
        // The demo's and the e2e bench's own progress lines go to stderr: the services' logs
        // (a line per order at info) stay at warnings unless RUST_LOG asks for more. Colour
        // only on a terminal: redirected, stderr is plain text.
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(telemetry::colour_on_stderr())
            .with_writer(std::io::stderr)
            .try_init();
        return runtime.block_on(run(cli.command));
    }
    let guard = match runtime.block_on(async { telemetry::init(service_name, cli.log_format) }) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let code = runtime.block_on(run(cli.command));
    guard.shutdown(Duration::from_secs(5));
    code
}

async fn run(command: Command) -> ExitCode {
    let result = match command {
        Command::Orders(args) => match args.into_config() {
            Ok(config) => waybill_orders::run(config, shutdown::on_signal())
                .await
                .map_err(anyhow::Error::from),
            Err(error) => return usage_error(&error),
        },
        Command::Dispatcher(args) => match args.into_config() {
            Ok(config) => waybill_dispatcher::run(config, shutdown::on_signal())
                .await
                .map_err(anyhow::Error::from),
            Err(error) => return usage_error(&error),
        },
        Command::StatusIngest(args) => match args.into_config() {
            Ok(config) => waybill_status_ingest::run(config, shutdown::on_signal())
                .await
                .map_err(anyhow::Error::from),
            Err(error) => return usage_error(&error),
        },
        Command::Dev(args) => dev::run(args, shutdown::on_signal()).await,
        Command::Bench(command) => bench::run(command).await,
        Command::Demo(args) => match demo::run(args).await {
            Ok(true) => Ok(()),
            // The journey table says which order did not arrive.
            Ok(false) => return ExitCode::FAILURE,
            Err(error) => Err(error),
        },
        Command::Partner(args) => partner::run(args, shutdown::on_signal()).await,
        Command::PartnerCheck(args) => return partner_check::main(args).await,
        Command::Sidecar(args) => sidecar::run(args, shutdown::on_signal()).await,
        Command::Token(command) => match token::run_token(command).await {
            Ok(true) => Ok(()),
            // A refused token: the explanation is printed; exit 1 like a failed check.
            Ok(false) => return ExitCode::FAILURE,
            Err(error) => Err(error),
        },
        Command::Keys(command) => token::run_keys(command),
        Command::Health(args) => health::run(args).await,
        Command::Migrate(args) => match migrate::run(args).await {
            Ok(code) => return code,
            Err(error) => Err(error),
        },
        Command::Catalog(args) => match args.run().await {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(error) => Err(error),
        },
        Command::Admin(args) => match admin::run(args).await {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(error) => Err(error),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            if let Some(code) = admin::exit_code(&error) {
                ExitCode::from(code)
            } else if is_settings_error(&error) {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A refused setting: printed, exit 64.
fn usage_error(error: &waybill_service_kit::config::ConfigError) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(EXIT_USAGE)
}

/// Whether a service or a partner's connector refused its settings (TLS files, credentials, the
/// production guard, the page-token key, Kafka settings the build cannot honour) before
/// starting: a usage error (64), not a failure of the service.
fn is_settings_error(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<waybill_orders::RunError>()
        .is_some_and(waybill_orders::RunError::is_settings_error)
        || error
            .downcast_ref::<waybill_dispatcher::RunError>()
            .is_some_and(waybill_dispatcher::RunError::is_settings_error)
        || error
            .downcast_ref::<waybill_status_ingest::RunError>()
            .is_some_and(waybill_status_ingest::RunError::is_settings_error)
        || error.downcast_ref::<sidecar::SettingsError>().is_some()
        || matches!(
            error.downcast_ref::<waybill_connector_sdk::ConnectorError>(),
            Some(waybill_connector_sdk::ConnectorError::Config(_))
        )
}
