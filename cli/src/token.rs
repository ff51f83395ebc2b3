//! `waybill token sign | verify` and `waybill keys generate`: what an operator or a partner's
//! developer needs to make, check and enrol report tokens by hand (with grpcurl).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use uuid::Uuid;
use waybill_proto::v1::OrderStatus;
use waybill_service_kit::{
    db::{Database, PoolSettings},
    secrets::read_private_file,
};
use waybill_token::{
    EnrolledKey, KeyRefusal, MAX_LIFETIME_SECONDS, Report, ReportClaims, SigningKey, TokenError,
    TokenSigner,
    checks::{Check, Outcome, Step},
    error::snippet,
    explain_report, keys,
};

/// `waybill token …`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Sign a report token with a partner's private key (PKCS#8 PEM) and print it.
    Sign(SignArgs),
    /// Check a token the way StatusIngest does; `--explain` says which check fails and why.
    Verify(VerifyArgs),
}

/// `waybill keys …`.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Write a new Ed25519 key pair for a partner and print the `waybill admin keys add`
    /// command that enrols it.
    Generate(GenerateArgs),
}

/// The report a token is for: every field of the request, each bound by its own claim.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The reporting partner's id (`iss`).
    #[arg(long)]
    partner: Option<String>,
    /// The order id, i.e. the correlation id of the order's Kafka message (`sub`).
    #[arg(long)]
    order: Option<String>,
    /// The partner's unique id of this report.
    #[arg(long)]
    report_id: Option<String>,
    /// RECEIVED_BY_PARTNER, SHIPPED, DELIVERED, EXCEPTION or REJECTED_BY_PARTNER.
    #[arg(long)]
    status: Option<String>,
    /// The tracking id reported (none: empty).
    #[arg(long)]
    tracking_id: Option<String>,
    /// Free text for people, exactly as the request carries it (none: empty).
    #[arg(long)]
    detail: Option<String>,
    /// Machine-readable reason, upper-case letters, digits and '_' (none: empty).
    #[arg(long)]
    detail_code: Option<String>,
    /// Someone must act: `--action-required` (or `=true`), `--action-required=false` (none: false).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    action_required: Option<bool>,
    /// When it happened, RFC 3339 (default: now when signing).
    #[arg(long)]
    occurred_at: Option<DateTime<Utc>>,
}

/// Settings of `waybill token sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The partner's private key file: PKCS#8 PEM as `openssl genpkey -algorithm ed25519` or
    /// `waybill keys generate` writes it (readable by its owner only).
    #[arg(long)]
    key: PathBuf,
    /// The id the key was enrolled under (`kid`).
    #[arg(long)]
    key_id: String,
    #[command(flatten)]
    report: ReportArgs,
    /// The Waybill environment the token is for (StatusIngest's `--audience`).
    #[arg(long, env = "WAYBILL_TOKEN_AUDIENCE", default_value = "waybill-local")]
    audience: String,
    /// Seconds the token stays valid (at most 300).
    #[arg(long, default_value_t = 120)]
    lifetime: i64,
    /// Print the whole ReportStatus request as JSON (for `grpcurl -d @`), not just the token.
    #[arg(long)]
    request_json: bool,
}

/// Settings of `waybill token verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The token (`-` reads it from stdin).
    token: String,
    /// Print every check and which one fails, with what to do about it.
    #[arg(long)]
    explain: bool,
    /// The partner's public key (raw 32 bytes, or SubjectPublicKeyInfo PEM/DER) instead of the
    /// enrolled one.
    #[arg(long, conflicts_with = "database_url")]
    key: Option<PathBuf>,
    /// Look the key up where StatusIngest does (`partner_keys`, by the token's iss and kid).
    #[arg(long, env = "WAYBILL_DATABASE_URL")]
    database_url: Option<String>,
    /// The audience StatusIngest expects.
    #[arg(long, env = "WAYBILL_TOKEN_AUDIENCE", default_value = "waybill-local")]
    audience: String,
    /// Check at this time instead of now (RFC 3339).
    #[arg(long)]
    at: Option<DateTime<Utc>>,
    /// The request the token travels with: each given field is compared to its claim.
    #[command(flatten)]
    report: ReportArgs,
}

/// Settings of `waybill keys generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// The partner the key is for.
    #[arg(long)]
    partner: String,
    /// The id to enrol the key under (the token's `kid`); 1-64 letters, digits, '-', '_', '.'.
    #[arg(long)]
    key_id: String,
    /// Directory to write `<key-id>.pem` (private, mode 600) and `<key-id>.pub.pem` into.
    #[arg(long, default_value = ".")]
    out_dir: PathBuf,
    /// The dispatcher's admin address, for the printed enrolment command.
    #[arg(long, env = "WAYBILL_DISPATCHER", default_value = DEFAULT_DISPATCHER)]
    dispatcher: String,
    /// The CA certificate of a dispatcher with TLS: the printed command then passes it as
    /// `--tls-ca` (the operator's API key and client certificate come from their environment,
    /// as `waybill admin` reads them).
    #[arg(long, env = "WAYBILL_TLS_CA")]
    dispatcher_ca: Option<PathBuf>,
}

/// Where `waybill admin` looks for the dispatcher when not told.
const DEFAULT_DISPATCHER: &str = "127.0.0.1:50052";

/// Short or full status name → the short name tokens carry.
fn status_name(name: &str) -> anyhow::Result<String> {
    let short = name
        .trim()
        .trim_start_matches("ORDER_STATUS_")
        .to_ascii_uppercase();
    match OrderStatus::from_short_name(&short) {
        Some(status) => Ok(status.short_name().to_owned()),
        None => bail!(
            "unknown status {name:?}: use RECEIVED_BY_PARTNER, SHIPPED, DELIVERED, EXCEPTION or REJECTED_BY_PARTNER"
        ),
    }
}

/// Runs `waybill token …`; the exit code says whether a verified token passed.
pub async fn run_token(command: TokenCommand) -> anyhow::Result<bool> {
    match command {
        TokenCommand::Sign(args) => sign(args).map(|()| true),
        TokenCommand::Verify(args) => verify(args).await,
    }
}

fn sign(args: SignArgs) -> anyhow::Result<()> {
    if !(1..=MAX_LIFETIME_SECONDS).contains(&args.lifetime) {
        bail!("--lifetime must be 1 to {MAX_LIFETIME_SECONDS} seconds");
    }
    let pem = read_private_file(&args.key)?;
    let key = keys::signing_key_from_pkcs8(&pem)
        .with_context(|| format!("cannot read {}", args.key.display()))?;
    let required = |value: Option<String>, flag: &str| {
        value.with_context(|| format!("{flag} is required to sign a token"))
    };
    let now = Utc::now();
    let report = Report {
        partner_id: required(args.report.partner, "--partner")?,
        order_id: required(args.report.order, "--order")?,
        report_id: required(args.report.report_id, "--report-id")?,
        status: status_name(&required(args.report.status, "--status")?)?,
        tracking_id: args.report.tracking_id.unwrap_or_default(),
        detail: args.report.detail.unwrap_or_default(),
        detail_code: args.report.detail_code.unwrap_or_default(),
        action_required: args.report.action_required.unwrap_or_default(),
        occurred_at: waybill_service_kit::clock::truncate_to_micros(
            args.report.occurred_at.unwrap_or(now),
        ),
    };
    let claims = ReportClaims::new(
        &report,
        &args.audience,
        now,
        args.lifetime,
        Uuid::new_v4().to_string(),
    );
    let token = TokenSigner::new(key, args.key_id).sign(&claims);
    if args.request_json {
        let request = serde_json::json!({
            "correlation_id": report.order_id,
            "partner_id": report.partner_id,
            "report_id": report.report_id,
            "status": format!("ORDER_STATUS_{}", report.status),
            "tracking_id": report.tracking_id,
            "detail": report.detail,
            "detail_code": report.detail_code,
            "action_required": report.action_required,
            "occurred_at": claims.occurred_at,
            "token": token,
        });
        println!("{request}");
    } else {
        println!("{token}");
    }
    Ok(())
}

/// Why `waybill token verify` did not say "valid": the token was refused, or the key could not
/// be read (an error of the command, not a verdict).
#[derive(Debug)]
enum Refusal {
    Token(TokenError),
    Failed(anyhow::Error),
}

impl From<TokenError> for Refusal {
    fn from(error: TokenError) -> Self {
        Self::Token(error)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(error) => error.fmt(f),
            Self::Failed(error) => write!(f, "{error:#}"),
        }
    }
}

/// The key to check the signature with: the `--key` file, the one enrolled in the database, or
/// none given.
async fn key_for(
    args: &VerifyArgs,
    partner_id: &str,
    key_id: &str,
) -> Result<Option<EnrolledKey>, Refusal> {
    match (&args.key, &args.database_url) {
        (Some(path), _) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read {}", path.display()))
                .map_err(Refusal::Failed)?;
            let key = keys::verifying_key_from_bytes(&bytes)
                .with_context(|| format!("cannot read {}", path.display()))
                .map_err(Refusal::Failed)?;
            Ok(Some(EnrolledKey::Current(key)))
        }
        (None, Some(url)) => {
            let shutdown = tokio_util::sync::CancellationToken::new();
            let db = Database::connect(url, &PoolSettings::default(), shutdown.clone())
                .await
                .map_err(|error| Refusal::Failed(error.into()))?;
            let store = waybill_status_ingest::store::for_database(&db);
            let enrolled = store.partner_key(partner_id, key_id).await;
            db.close().await;
            shutdown.cancel();
            let enrolled = enrolled
                .context("cannot read the enrolled keys")
                .map_err(Refusal::Failed)?;
            Ok(Some(enrolled.map_or(
                EnrolledKey::Refused(KeyRefusal::Unknown),
                |key| EnrolledKey::stored(&key.public_key, key.revoked_at),
            )))
        }
        (None, None) => Ok(None),
    }
}

/// The request to compare the claims with: each field given on the command line, the claim
/// itself for the others.
fn request(given: &ReportArgs, claims: &ReportClaims) -> Result<Report, Refusal> {
    Ok(Report {
        partner_id: given.partner.clone().unwrap_or_else(|| claims.iss.clone()),
        order_id: given.order.clone().unwrap_or_else(|| claims.sub.clone()),
        report_id: given
            .report_id
            .clone()
            .unwrap_or_else(|| claims.report_id.clone()),
        status: match &given.status {
            Some(status) => status_name(status).map_err(Refusal::Failed)?,
            None => claims.status.clone(),
        },
        tracking_id: given
            .tracking_id
            .clone()
            .unwrap_or_else(|| claims.tracking_id.clone()),
        detail: given
            .detail
            .clone()
            .unwrap_or_else(|| claims.detail.clone()),
        detail_code: given
            .detail_code
            .clone()
            .unwrap_or_else(|| claims.detail_code.clone()),
        action_required: given.action_required.unwrap_or(claims.action_required),
        occurred_at: match given.occurred_at {
            Some(at) => at,
            None => claims.occurred_at()?,
        },
    })
}

/// Whether any field of the request was given to compare with.
fn compared(given: &ReportArgs) -> bool {
    given.partner.is_some()
        || given.order.is_some()
        || given.report_id.is_some()
        || given.status.is_some()
        || given.tracking_id.is_some()
        || given.detail.is_some()
        || given.detail_code.is_some()
        || given.action_required.is_some()
        || given.occurred_at.is_some()
}

/// Prints one check of `--explain`: `ok`, `FAIL` with what to do, or `--` not checked.
fn explain_step(args: &VerifyArgs, now: DateTime<Utc>, step: &Step<'_>) {
    let (mark, detail) = match step.outcome {
        Outcome::Passed(detail) => ("ok  ", detail.to_owned()),
        Outcome::NotChecked(why) => ("--  ", why.to_owned()),
        Outcome::Failed(error) => ("FAIL", error.to_owned()),
    };
    let detail = match (step.check, step.outcome) {
        (Check::Key, Outcome::Passed(_)) if args.key.is_some() => "the --key file".to_owned(),
        (Check::Key, Outcome::Passed(_)) => "the enrolled key, not revoked".to_owned(),
        (Check::Binding, Outcome::Passed(_)) if !compared(&args.report) => {
            "not compared (give --order, --report-id, … to compare)".to_owned()
        }
        _ => detail,
    };
    let what = step.check.name();
    println!(
        "{mark} {what}{}{detail}",
        if detail.is_empty() { "" } else { ": " }
    );
    if let (Check::Form, Outcome::Passed(_), Some(claims)) = (step.check, step.outcome, step.claims)
    {
        println!(
            "     claims: sub {:?}, report_id {:?}, status {:?}, tracking_id {:?}, detail {}, detail_code {:?}, action_required {}, occurred_at {:?}, aud {:?}, iat {}, exp {}, jti {:?}",
            claims.sub,
            claims.report_id,
            claims.status,
            claims.tracking_id,
            snippet(&claims.detail),
            claims.detail_code,
            claims.action_required,
            claims.occurred_at,
            claims.aud,
            claims.iat,
            claims.exp,
            claims.jti
        );
    }
    if let Outcome::Failed(_) = step.outcome {
        println!("     what to do: {}", step.check.remedy());
        if step.check == Check::Validity {
            println!(
                "     here: aud must be {:?}; Waybill's time is {}",
                args.audience,
                now.timestamp()
            );
        }
    }
}

/// `waybill token verify`: StatusIngest's own walk of the checks ([`explain_report`]), each
/// printed with `--explain`. `Ok(false)`: refused.
async fn verify(args: VerifyArgs) -> anyhow::Result<bool> {
    let token = if args.token == "-" {
        let mut text = String::new();
        std::io::stdin().read_line(&mut text)?;
        text.trim().to_owned()
    } else {
        args.token.trim().to_owned()
    };
    let now = args.at.unwrap_or_else(Utc::now);
    let args = &args;
    let walked = explain_report(
        &token,
        &args.audience,
        now,
        |partner_id, key_id| async move { key_for(args, &partner_id, &key_id).await },
        |claims| request(&args.report, claims),
        &mut |step| {
            if args.explain {
                explain_step(args, now, &step);
            }
        },
    )
    .await;
    match walked {
        Ok(_) if args.explain => {
            println!(
                "     left to StatusIngest: the order is routed to this partner, the jti is new, the report id is new"
            );
            Ok(true)
        }
        Ok(_) => {
            println!("valid");
            Ok(true)
        }
        Err(Refusal::Token(error)) => {
            if !args.explain {
                println!("refused: {error}");
            }
            Ok(false)
        }
        Err(Refusal::Failed(error)) => Err(error),
    }
}

/// Runs `waybill keys …`.
pub fn run_keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Generate(args) => generate(args),
    }
}

fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let valid_id = !args.key_id.is_empty()
        && args.key_id.len() <= 64
        && args
            .key_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !args.key_id.starts_with('.');
    if !valid_id {
        bail!("--key-id must be 1-64 letters, digits, '-', '_' or '.' (not starting with '.')");
    }
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let private_path = args.out_dir.join(format!("{}.pem", args.key_id));
    let public_path = args.out_dir.join(format!("{}.pub.pem", args.key_id));
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    write_new(
        &private_path,
        keys::signing_key_to_pem(&key)?.as_bytes(),
        true,
    )?;
    write_new(
        &public_path,
        keys::verifying_key_to_pem(&key.verifying_key())?.as_bytes(),
        false,
    )?;
    eprintln!(
        "wrote {} (private: keep it secret, the partner signs with it) and {} (public)",
        private_path.display(),
        public_path.display()
    );
    eprintln!(
        "enrol the public key (an operator, with WAYBILL_API_KEY and, for an mTLS dispatcher, WAYBILL_CLIENT_CERT/WAYBILL_CLIENT_KEY set):"
    );
    println!("{}", enrol_command(&args, &public_path));
    Ok(())
}

/// The `waybill admin keys add …` command that enrols the key just written, its words quoted
/// for a POSIX shell where they need it.
fn enrol_command(args: &GenerateArgs, public_path: &Path) -> String {
    let mut words = vec![
        "waybill".to_owned(),
        "admin".to_owned(),
        "keys".to_owned(),
        "add".to_owned(),
        "--partner".to_owned(),
        args.partner.clone(),
        "--key-id".to_owned(),
        args.key_id.clone(),
        "--public-key".to_owned(),
        public_path.display().to_string(),
    ];
    if args.dispatcher != DEFAULT_DISPATCHER {
        words.extend(["--dispatcher".to_owned(), args.dispatcher.clone()]);
    }
    if let Some(ca) = &args.dispatcher_ca {
        words.extend(["--tls-ca".to_owned(), ca.display().to_string()]);
    }
    words
        .iter()
        .map(|word| shell_word(word))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `word` as one POSIX shell word: as it is when it is made of safe characters, else in single
/// quotes.
fn shell_word(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@=+,".contains(c));
    if safe {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Writes a file that must not exist yet (never overwrite a key), private ones with mode 600.
pub(crate) fn write_new(path: &Path, contents: &[u8], private: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
