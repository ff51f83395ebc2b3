//! The schema's version: which of this binary's migrations a database has, which it lacks,
//! and which it has that this binary does not know (a newer binary migrated it).
//!
//! Every service migrates at start by default ([`SchemaPolicy::Migrate`]); a deployment that
//! upgrades the schema as a step of its own runs `waybill migrate` first and starts the
//! services with [`SchemaPolicy::Require`], so a service never changes the schema and refuses
//! to start on one that is behind it. A schema *ahead* of the binary is allowed either way, with
//! a warning: migrations only add (tables, columns with defaults, indexes), so the previous
//! binary keeps working during a rolling upgrade and after a rollback. sqlx's own runner
//! refuses that case (a migration "missing in the resolved migrations"), which would keep the
//! previous version's instances from restarting during an upgrade; this runner applies the
//! same migrations through sqlx's [`Migrate`] steps (lock, bookkeeping table, dirty check,
//! apply each in its transaction, unlock) without that refusal.

use std::collections::BTreeMap;

use sqlx::migrate::{AppliedMigration, Migrate, MigrateError, Migrator};

/// What a service does with the schema when it connects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SchemaPolicy {
    /// Apply this binary's pending migrations (the default; one process at a time, under the
    /// database's migration lock).
    #[default]
    Migrate,
    /// Change nothing and refuse to start if any of this binary's migrations is missing.
    Require,
    /// Change nothing and check nothing: for `waybill migrate`, which reports and applies.
    Leave,
}

/// The services' schema setting.
#[derive(Debug, Clone, clap::Args)]
pub struct SchemaArgs {
    /// Apply the database's pending migrations at start (`true`, the default), or refuse to
    /// start while any is pending (`false`: the schema is upgraded as a deployment step of its
    /// own, with `waybill migrate`, and services never change it).
    #[arg(
        long,
        env = "WAYBILL_MIGRATE_ON_START",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub migrate_on_start: bool,
}

impl SchemaArgs {
    /// The policy these settings ask for.
    pub fn policy(&self) -> SchemaPolicy {
        if self.migrate_on_start {
            SchemaPolicy::Migrate
        } else {
            SchemaPolicy::Require
        }
    }
}

/// One migration: its version and what it does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Migration {
    /// The version (the file's number).
    pub version: i64,
    /// What it does (the file's name after the number).
    pub description: String,
}

/// Where a database's schema stands against this binary's migrations.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SchemaStatus {
    /// This binary's migrations the database has.
    pub applied: Vec<Migration>,
    /// This binary's migrations the database lacks, in the order they apply.
    pub pending: Vec<Migration>,
    /// Versions the database has that this binary does not know: a newer binary migrated it.
    pub newer: Vec<i64>,
    /// Versions the database has whose text differs from this binary's (someone edited a
    /// migration after it ran): nothing can be applied until that is resolved.
    pub modified: Vec<i64>,
    /// A migration that failed partway (only on a database without transactional DDL; never
    /// expected on Postgres or SQLite): nothing can be applied until it is resolved by hand.
    pub dirty: Option<i64>,
}

impl SchemaStatus {
    /// The newest version the database has (0 for an empty one).
    pub fn version(&self) -> i64 {
        let known = self.applied.iter().map(|m| m.version);
        known.chain(self.newer.iter().copied()).max().unwrap_or(0)
    }

    /// Whether every one of this binary's migrations is there, unmodified.
    pub fn is_current(&self) -> bool {
        self.pending.is_empty() && self.modified.is_empty() && self.dirty.is_none()
    }
}

/// Why the schema cannot be used or brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// [`SchemaPolicy::Require`] and migrations are missing.
    #[error(
        "the database schema is behind this binary: migration{} {} not applied; run \
         `waybill migrate` with the same database URL (or start the service with \
         --migrate-on-start true)",
        if .0.len() == 1 { "" } else { "s" },
        list(.0)
    )]
    Behind(Vec<Migration>),
    /// An applied migration's text differs from this binary's.
    #[error(
        "migration {0} was applied from a different text than this binary's (a migration file was \
         edited after it ran): restore the original file; nothing was changed"
    )]
    Modified(i64),
    /// A migration failed partway.
    #[error(
        "migration {0} failed partway and is marked unfinished in _sqlx_migrations: repair the \
         schema by hand, then delete that row; nothing was changed"
    )]
    Dirty(i64),
    /// The database failed while reading or applying.
    #[error("cannot read or change the schema: {0}")]
    Database(#[from] MigrateError),
}

fn list(migrations: &[Migration]) -> String {
    let names: Vec<String> = migrations
        .iter()
        .map(|m| format!("{} ({})", m.version, m.description))
        .collect();
    names.join(", ")
}

/// Compares what `conn` has (its bookkeeping table, if there is one) with `migrator`'s.
/// `has_table`: whether the bookkeeping table exists (asked without creating it).
pub(super) async fn status<C: Migrate>(
    conn: &mut C,
    migrator: &Migrator,
    has_table: bool,
) -> Result<SchemaStatus, SchemaError> {
    let (applied, dirty) = if has_table {
        (
            conn.list_applied_migrations().await?,
            conn.dirty_version().await?,
        )
    } else {
        (Vec::new(), None)
    };
    Ok(compare(migrator, &applied, dirty))
}

fn compare(migrator: &Migrator, applied: &[AppliedMigration], dirty: Option<i64>) -> SchemaStatus {
    let applied: BTreeMap<i64, &AppliedMigration> =
        applied.iter().map(|m| (m.version, m)).collect();
    let mut status = SchemaStatus {
        dirty,
        ..SchemaStatus::default()
    };
    for migration in migrator.iter() {
        if migration.migration_type.is_down_migration() {
            continue;
        }
        let entry = Migration {
            version: migration.version,
            description: migration.description.to_string(),
        };
        match applied.get(&migration.version) {
            Some(done) if done.checksum != migration.checksum => {
                status.modified.push(migration.version);
                status.applied.push(entry);
            }
            Some(_) => status.applied.push(entry),
            None => status.pending.push(entry),
        }
    }
    status.newer = applied
        .keys()
        .copied()
        .filter(|version| !migrator.version_exists(*version))
        .collect();
    status
}

/// Applies `migrator`'s pending migrations on `conn` under the database's migration lock and
/// returns those it applied (none when another process had applied them first).
pub(super) async fn migrate<C: Migrate>(
    conn: &mut C,
    migrator: &Migrator,
) -> Result<Vec<Migration>, SchemaError> {
    conn.lock().await?;
    let result = migrate_locked(conn, migrator).await;
    // Unlock even after a failure, or a pooled connection would keep the lock.
    let unlocked = conn.unlock().await;
    let applied = result?;
    unlocked?;
    Ok(applied)
}

async fn migrate_locked<C: Migrate>(
    conn: &mut C,
    migrator: &Migrator,
) -> Result<Vec<Migration>, SchemaError> {
    conn.ensure_migrations_table().await?;
    let status = status(conn, migrator, true).await?;
    refuse_unusable(&status)?;
    for pending in &status.pending {
        let migration = migrator
            .iter()
            .find(|m| m.version == pending.version && !m.migration_type.is_down_migration());
        if let Some(migration) = migration {
            conn.apply(migration).await?;
        }
    }
    Ok(status.pending)
}

/// A modified or dirty schema: nothing may be applied, and no service should start on it.
pub(super) fn refuse_unusable(status: &SchemaStatus) -> Result<(), SchemaError> {
    if let Some(version) = status.dirty {
        return Err(SchemaError::Dirty(version));
    }
    if let Some(version) = status.modified.first() {
        return Err(SchemaError::Modified(*version));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn applied(version: i64, checksum: &[u8]) -> AppliedMigration {
        AppliedMigration {
            version,
            checksum: Cow::Owned(checksum.to_vec()),
        }
    }

    fn migrator() -> &'static Migrator {
        &super::super::SQLITE_MIGRATIONS
    }

    #[test]
    fn an_empty_database_lacks_every_migration() {
        let status = compare(migrator(), &[], None);
        assert!(status.applied.is_empty());
        assert_eq!(status.pending.len(), migrator().iter().count());
        assert_eq!(status.pending[0].version, 1);
        assert_eq!(status.version(), 0);
        assert!(!status.is_current());
    }

    #[test]
    fn versions_the_binary_does_not_know_are_newer_not_an_error() {
        let mut done: Vec<AppliedMigration> = migrator()
            .iter()
            .map(|m| applied(m.version, &m.checksum))
            .collect();
        done.push(applied(9_999, b"from a newer binary"));
        let status = compare(migrator(), &done, None);
        assert!(status.pending.is_empty());
        assert_eq!(status.newer, vec![9_999]);
        assert_eq!(status.version(), 9_999);
        assert!(status.is_current());
        assert!(refuse_unusable(&status).is_ok());
    }

    #[test]
    fn an_edited_migration_or_a_dirty_one_stops_everything() {
        let first = migrator().iter().next().unwrap();
        let status = compare(migrator(), &[applied(first.version, b"edited")], None);
        assert_eq!(status.modified, vec![first.version]);
        assert!(matches!(
            refuse_unusable(&status),
            Err(SchemaError::Modified(v)) if v == first.version
        ));
        let status = compare(migrator(), &[], Some(3));
        assert!(matches!(
            refuse_unusable(&status),
            Err(SchemaError::Dirty(3))
        ));
    }

    #[test]
    fn behind_names_each_missing_migration_and_the_remedy() {
        let error = SchemaError::Behind(vec![Migration {
            version: 9,
            description: "key last used".into(),
        }]);
        let text = error.to_string();
        assert!(
            text.contains("migration 9 (key last used) not applied"),
            "{text}"
        );
        assert!(text.contains("waybill migrate"), "{text}");
    }
}
