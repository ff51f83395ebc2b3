//! `waybill migrate`: the schema as a deployment step of its own. Without flags it applies this
//! binary's pending migrations (under the database's migration lock) and prints each; with
//! `--check` it changes nothing and says where the schema stands: exit 0 when current, 3 when
//! migrations are pending (a script's cue to run `waybill migrate`), 1 when it cannot tell or
//! the schema cannot be used (an edited or half-applied migration).

use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use waybill_service_kit::db::{Database, PoolSettings, SchemaPolicy, SchemaStatus};

/// Exit status of `--check` when migrations are pending.
const EXIT_PENDING: u8 = 3;

/// Settings of `waybill migrate`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The database: `postgres://…` (with its TLS parameters) or `sqlite://PATH`.
    #[arg(long, env = "WAYBILL_DATABASE_URL")]
    database_url: String,
    /// Change nothing: say which migrations are applied, pending or newer than this binary.
    #[arg(long)]
    check: bool,
    /// Print one JSON object (`database`, `version`, `applied_now`, `pending`, `newer`,
    /// `modified`, `dirty`) instead of lines.
    #[arg(long)]
    json: bool,
}

/// Runs the command; the exit status as the module says.
pub async fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let settings = PoolSettings {
        max_connections: 2,
        schema: SchemaPolicy::Leave,
        ..PoolSettings::default()
    };
    let shutdown = CancellationToken::new();
    let mut db = Database::connect(&args.database_url, &settings, shutdown.clone())
        .await
        .context("cannot open the database")?;
    let outcome = if args.check {
        Ok(Vec::new())
    } else {
        db.migrate().await
    };
    let status = db.schema().clone();
    let location = db.location().to_owned();
    db.close().await;
    shutdown.cancel();
    let applied_now = outcome.context("the schema was not changed")?;
    if args.json {
        let json = serde_json::json!({
            "database": location,
            "version": status.version(),
            "applied_now": applied_now,
            "pending": status.pending,
            "newer": status.newer,
            "modified": status.modified,
            "dirty": status.dirty,
        });
        println!("{json}");
    } else {
        print!("{}", describe(&location, &status, &applied_now, args.check));
    }
    Ok(if status.dirty.is_some() || !status.modified.is_empty() {
        ExitCode::FAILURE
    } else if status.pending.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PENDING)
    })
}

/// The lines printed without `--json`.
fn describe(
    location: &str,
    status: &SchemaStatus,
    applied_now: &[waybill_service_kit::db::Migration],
    check: bool,
) -> String {
    let mut out = format!("{location}: schema version {}\n", status.version());
    for migration in applied_now {
        out.push_str(&format!(
            "applied {} ({})\n",
            migration.version, migration.description
        ));
    }
    for migration in &status.pending {
        out.push_str(&format!(
            "pending {} ({})\n",
            migration.version, migration.description
        ));
    }
    for version in &status.newer {
        out.push_str(&format!(
            "newer than this binary: {version} (applied by a newer version; this binary runs on it)\n"
        ));
    }
    for version in &status.modified {
        out.push_str(&format!(
            "modified: {version} was applied from a different text than this binary's: restore the original file\n"
        ));
    }
    if let Some(version) = status.dirty {
        out.push_str(&format!(
            "unfinished: {version} failed partway: repair the schema by hand, then delete its row in _sqlx_migrations\n"
        ));
    }
    if status.is_current() {
        out.push_str(if applied_now.is_empty() && !check {
            "up to date: nothing to apply\n"
        } else {
            "up to date\n"
        });
    } else if check && !status.pending.is_empty() {
        out.push_str("run `waybill migrate` with the same --database-url to apply them\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use waybill_service_kit::db::Migration;

    use super::*;

    fn migration(version: i64, description: &str) -> Migration {
        Migration {
            version,
            description: description.to_owned(),
        }
    }

    #[test]
    fn a_check_names_what_is_pending_and_the_command_that_applies_it() {
        let status = SchemaStatus {
            applied: vec![migration(1, "orders")],
            pending: vec![migration(2, "dispatch")],
            ..SchemaStatus::default()
        };
        let text = describe("sqlite /tmp/x.db", &status, &[], true);
        assert_eq!(
            text,
            "sqlite /tmp/x.db: schema version 1\npending 2 (dispatch)\n\
             run `waybill migrate` with the same --database-url to apply them\n"
        );
    }

    #[test]
    fn a_migration_lists_what_it_applied() {
        let status = SchemaStatus {
            applied: vec![migration(1, "orders"), migration(2, "dispatch")],
            newer: vec![10],
            ..SchemaStatus::default()
        };
        let text = describe("db", &status, &[migration(2, "dispatch")], false);
        assert!(
            text.starts_with("db: schema version 10\napplied 2 (dispatch)\n"),
            "{text}"
        );
        assert!(text.contains("newer than this binary: 10"), "{text}");
        assert!(text.ends_with("up to date\n"), "{text}");
    }
}
