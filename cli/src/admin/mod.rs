//! `waybill admin`: the operator's jobs over the services' own RPCs, one command each.
//!
//! - [`dispatches`]: list, get, retry (DispatchAdmin);
//! - [`partners`]: partners list, enrol, update, disable; keys add, list, revoke;
//! - [`routes`]: list, set, delete, explain;
//! - [`catalog`]: list, upsert, retire, import (Orders' CatalogService; the same command as
//!   `waybill catalog`);
//! - [`stats`]: relay stats (GetRelayStats), reports stats (StatusIngest's GetReportStats);
//! - [`connection`]: addresses, TLS (CA, client certificate), the API key, and what a failure
//!   means (exit 64 usage, 1 refused, 69 unreachable), shared by every command;
//! - [`output`]: aligned tables, or with `--json` the response as proto3 JSON.

pub mod catalog;
pub mod connection;
mod dispatches;
pub mod output;
mod partners;
mod routes;
mod stats;

use self::connection::Connection;

/// `waybill admin [connection flags] COMMAND`.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    #[command(flatten)]
    connection: Connection,
    /// Print the response as proto3 JSON (every field, defaults included) instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

/// The operator's jobs.
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Orders' dispatches: list (by state, partner), get one with its attempts, retry.
    #[command(subcommand)]
    Dispatches(dispatches::DispatchesCommand),
    /// Partners: list, enrol, update (only the fields given; --dry-run), disable.
    #[command(subcommand)]
    Partners(partners::PartnersCommand),
    /// Routes: list, set, delete, explain.
    #[command(subcommand)]
    Routes(routes::RoutesCommand),
    /// Partners' signing keys: add (a PEM public key file), list, revoke.
    #[command(subcommand)]
    Keys(partners::KeysCommand),
    /// The catalog (on Orders): list, upsert, retire, import a file.
    #[command(subcommand)]
    Catalog(catalog::CatalogCommand),
    /// The relay: stats (backlog, can-send, counters, latency).
    #[command(subcommand)]
    Relay(stats::RelayCommand),
    /// Partners' status reports (on StatusIngest): stats.
    #[command(subcommand)]
    Reports(stats::ReportsCommand),
}

/// Runs a `waybill admin` command; `Ok(false)` when a catalog import refused its file.
pub async fn run(args: AdminArgs) -> anyhow::Result<bool> {
    let (c, json) = (&args.connection, args.json);
    match args.command {
        AdminCommand::Dispatches(command) => dispatches::run(command, c, json).await?,
        AdminCommand::Partners(command) => partners::run(command, c, json).await?,
        AdminCommand::Routes(command) => routes::run(command, c, json).await?,
        AdminCommand::Keys(command) => partners::run_keys(command, c, json).await?,
        AdminCommand::Catalog(command) => return catalog::run(command, c, json).await,
        AdminCommand::Relay(command) => stats::relay(command, c, json).await?,
        AdminCommand::Reports(command) => stats::reports(command, c, json).await?,
    }
    Ok(true)
}

/// The exit status `error` calls for, when it is a `waybill admin` / `waybill catalog`
/// failure (64 usage, 1 refused, 69 unreachable).
pub fn exit_code(error: &anyhow::Error) -> Option<u8> {
    error
        .downcast_ref::<connection::CallError>()
        .map(connection::CallError::exit_code)
}
