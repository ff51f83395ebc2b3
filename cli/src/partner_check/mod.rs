//! `waybill partner-check`: the conformance kit a partner runs against its own adapter before
//! going live. It plays Waybill's side — a broker with the partner's topic ([`kit`]), two
//! regions' StatusIngest that check tokens against keys it generated and enrolled
//! ([`ingest`]) — starts the adapter with the contract's environment ([`adapter`]), attacks it
//! through its real interface ([`scenarios`], staged by [`scene`]) and prints one verdict per
//! scenario that names the broken promise, as a table and as JSON ([`report`]).

mod adapter;
mod ingest;
mod kit;
mod report;
mod scenarios;
mod scene;

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use rand::{SeedableRng as _, rngs::StdRng, seq::SliceRandom as _};
use tokio_util::sync::CancellationToken;

use self::{
    ingest::{Keys, Region},
    report::{Findings, JsonReport, Verdict},
    scene::{Scene, Stage},
};

/// Exit status for bad flags (sysexits.h 64, like the other commands' settings errors).
const EXIT_USAGE: u8 = 64;

/// Settings of `waybill partner-check`.
#[derive(Debug, clap::Args)]
pub struct PartnerCheckArgs {
    /// The partner id the adapter is enrolled under (its topic is `waybill.partner.<id>`).
    #[arg(long)]
    partner_id: String,
    /// The shell command that starts the adapter (`sh -c`), run with WAYBILL_PARTNER_ID,
    /// WAYBILL_KAFKA_BROKERS, WAYBILL_TOPIC_PREFIX, WAYBILL_PARTNER_KEY_FILE,
    /// WAYBILL_PARTNER_KEY_ID, WAYBILL_TOKEN_AUDIENCE, WAYBILL_KAFKA_SESSION_TIMEOUT_MS,
    /// WAYBILL_KAFKA_FETCH_WAIT_MS and WAYBILL_CHECK_DIR (a directory kept across the kit's
    /// restarts of the adapter within one scenario: put the adapter's store there).
    #[arg(long)]
    start: String,
    /// Run only this scenario (repeatable); default: every one.
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// Seed of the order ids, their contents and the scenario order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the JSON report to this file (`-`: to stdout, after the table).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// How long an order may take to be answered, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// The audience the kit's StatusIngest requires in tokens.
    #[arg(long, default_value = "waybill-partner-check")]
    audience: String,
    /// Where each scenario's check directory and adapter log go (default: a temporary
    /// directory, removed when every scenario passed).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// Runs the check; exit 0 only when every selected scenario passed, 1 when one failed, 64 on
/// bad flags.
pub async fn main(args: PartnerCheckArgs) -> ExitCode {
    let selected = match validate(&args) {
        Ok(selected) => selected,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(&args, selected).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The scenarios to run, or what is wrong with the flags.
fn validate(args: &PartnerCheckArgs) -> Result<Vec<&'static str>, String> {
    let id = &args.partner_id;
    let valid_id = !id.is_empty()
        && id.len() <= 63
        && !id.starts_with('-')
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid_id {
        return Err(format!(
            "--partner-id {id:?}: 1-63 lower-case letters, digits or '-', not starting with '-'"
        ));
    }
    if args.start.trim().is_empty() {
        return Err("--start: give the shell command that starts the adapter".to_owned());
    }
    if args.timeout_secs == 0 || args.timeout_secs > 3600 {
        return Err("--timeout-secs: 1 to 3600".to_owned());
    }
    if args.audience.trim().is_empty() {
        return Err("--audience must not be empty".to_owned());
    }
    let mut selected = Vec::new();
    for name in &args.scenarios {
        match scenarios::ALL.iter().find(|s| **s == name.as_str()) {
            Some(found) if !selected.contains(found) => selected.push(*found),
            Some(_) => {}
            None => {
                return Err(format!(
                    "--scenario {name:?}: no such scenario; the scenarios are {}",
                    scenarios::ALL.join(", ")
                ));
            }
        }
    }
    if selected.is_empty() {
        selected = scenarios::ALL.to_vec();
    }
    Ok(selected)
}

async fn run(args: &PartnerCheckArgs, mut selected: Vec<&'static str>) -> anyhow::Result<bool> {
    selected.shuffle(&mut StdRng::seed_from_u64(args.seed));
    let (work, temporary) = match &args.work_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("waybill-partner-check-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let stop = CancellationToken::new();
    let keys = Arc::new(Keys::default());
    let region = |name: &'static str| {
        Region::start(
            name,
            &args.partner_id,
            &args.audience,
            keys.clone(),
            stop.clone(),
        )
    };
    let regions = [region("check-a").await?, region("check-b").await?];
    let stage = Stage {
        partner_id: args.partner_id.clone(),
        audience: args.audience.clone(),
        start: args.start.clone(),
        timeout: Duration::from_secs(args.timeout_secs),
        work: work.clone(),
        regions,
        keys,
    };
    let mut verdicts = Vec::new();
    for name in &selected {
        eprintln!("partner-check: {name} …");
        let verdict = scenario(&stage, name, args.seed).await;
        eprintln!(
            "partner-check: {name}: {} ({:.1} s)",
            verdict.verdict, verdict.seconds
        );
        verdicts.push(verdict);
    }
    stop.cancel();
    let passed = verdicts.iter().all(Verdict::passed);
    print!("{}", report::table(&verdicts));
    let json = JsonReport {
        partner_id: &args.partner_id,
        seed: args.seed,
        passed,
        scenarios: &verdicts,
    };
    let text = serde_json::to_string_pretty(&json)?;
    match args.json.as_deref() {
        Some(path) if path.as_os_str() == "-" => println!("{text}"),
        Some(path) => std::fs::write(path, format!("{text}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => {}
    }
    if passed && temporary {
        let _ = std::fs::remove_dir_all(&work);
    } else if !passed {
        println!(
            "each scenario's adapter log and check directory: {}",
            work.display()
        );
    }
    Ok(passed)
}

/// One scenario, start to verdict; a failure of the kit itself is a failed verdict saying so.
async fn scenario(stage: &Stage, name: &'static str, seed: u64) -> Verdict {
    let started = Instant::now();
    let index = scenarios::ALL.iter().position(|s| *s == name).unwrap_or(0) as u64;
    let mut findings = Findings::default();
    let mut scene = match Scene::new(stage, name, seed.wrapping_mul(1_000).wrapping_add(index)) {
        Ok(scene) => scene,
        Err(error) => {
            findings.broke(format!("the kit could not set the scenario up: {error:#}"));
            return findings.verdict(name, started.elapsed().as_secs_f64());
        }
    };
    let outcome = match scene.adapter.start() {
        Ok(()) => scenarios::run(name, &mut scene, &mut findings).await,
        Err(error) => Err(error),
    };
    scene.finish().await;
    if let Err(error) = outcome {
        findings.broke(format!("the kit failed: {error:#}"));
    }
    let calls = scene.calls();
    report::check_shipments(&calls, &mut findings);
    if !findings.clean() {
        findings.saw(format!(
            "adapter log: {}",
            scene.dir.join("adapter.log").display()
        ));
    }
    findings.saw(report::summary(&calls));
    findings.verdict(name, scene.seconds())
}
