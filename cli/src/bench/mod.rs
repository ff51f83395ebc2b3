//! `waybill bench`: load and latency figures that print numbers (never pass/fail timings).
//!
//! One module per benchmark; `measure.rs` is the leaf they share (rates, latency histograms,
//! what `/proc` says about the process and the host). `outbox.rs` (the drain's fill, bare-SQL
//! limit and check) and `prefill.rs` (`--prefill`) serve `place` and `drain`; `e2e/` reuses
//! `drain`'s limit and StatusIngest's raw-write bench for `--find-max`.

mod drain;
mod e2e;
mod limit;
mod measure;
mod outbox;
mod place;
mod prefill;
mod report;

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// PlaceOrder throughput and latency.
    Place(place::PlaceArgs),
    /// How fast one dispatcher (or several) drains a full outbox, next to the bare SQL
    /// bookkeeping on the same database in the same run (the limit).
    Drain(drain::DrainArgs),
    /// ReportStatus throughput and p50/p99 with signature checks on, on Postgres or SQLite, next
    /// to the raw rate of the same writes in the same run (the limit).
    Report(report::ReportArgs),
    /// The whole loop at a fixed offered rate (open loop): latency of every hop from the
    /// scheduled send to RECEIVED_BY_PARTNER, and a ledger of every order; `--find-max` finds
    /// the highest rate the loop sustains, next to the bare limits of the same run.
    E2e(e2e::E2eArgs),
}

/// Runs a benchmark subcommand.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Place(args) => place::run(args).await,
        BenchCommand::Drain(args) => drain::run(args).await,
        BenchCommand::Report(args) => report::run(args).await,
        BenchCommand::E2e(args) => e2e::run(args).await,
    }
}
