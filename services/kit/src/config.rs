//! What every service's settings have alike: flags are parsed by clap (with environment
//! fallbacks), then validated into a service's `Config` before anything starts; a refused
//! setting is a [`ConfigError`] naming the flag and its rule. Durations are written in the
//! notation of [`crate::duration`] (`250ms`, `30s`, `10m`).

/// A setting that makes no sense: which flag, and what it must be. Shown as
/// `invalid setting --batch-size: must be between 1 and 10000, got 0`, so an operator can fix
/// the command line or the environment variable behind it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {flag}: {rule}")]
pub struct ConfigError {
    /// The flag, e.g. `--batch-size` (its environment variable is listed in `--help`).
    pub flag: &'static str,
    /// What the value must be, and what it was where that helps.
    pub rule: String,
}

impl ConfigError {
    /// A broken rule on `flag`.
    pub fn new(flag: &'static str, rule: impl Into<String>) -> Self {
        Self {
            flag,
            rule: rule.into(),
        }
    }
}

/// The database a production service stores into: it must be named, so that a service never
/// creates a file of its own in whatever directory it was started from (`waybill dev` and
/// `waybill demo` keep an embedded default).
pub fn require_database_url(value: Option<String>) -> Result<String, ConfigError> {
    match value.map(|url| url.trim().to_owned()) {
        Some(url) if !url.is_empty() => Ok(url),
        _ => Err(ConfigError::new(
            "--database-url",
            "is required (or WAYBILL_DATABASE_URL): postgres://USER@HOST:5432/DB in production \
             (add ?sslmode=verify-full&sslrootcert=CA.pem for TLS), or sqlite://PATH for one \
             machine; `waybill dev` runs everything on an embedded database",
        )),
    }
}

/// Checks that a pool of `value` database connections can work: at least one.
pub fn check_pool_size(value: u32) -> Result<(), ConfigError> {
    if value == 0 {
        Err(ConfigError::new(
            "--db-max-connections",
            "must be at least 1",
        ))
    } else {
        Ok(())
    }
}

/// Checks that a count given in a setting lies in `range`, e.g. `must be between 1 and 10000,
/// got 0`.
pub fn check_range(
    flag: &'static str,
    value: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            flag,
            format!(
                "must be between {} and {}, got {value}",
                range.start(),
                range.end()
            ),
        ))
    }
}

/// Checks that a name given in a setting (a region, an audience) is not blank and is one line
/// of at most 100 characters.
pub fn check_name(flag: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::new(flag, "must not be empty"));
    }
    crate::text::check_text(flag, value, 100, crate::text::TextKind::Line)
        .map_err(|invalid| ConfigError::new(flag, invalid.rule))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_out_of_its_range_says_the_range_and_the_value() {
        assert_eq!(check_range("--batch-size", 1, 1..=10), Ok(()));
        assert_eq!(check_range("--batch-size", 10, 1..=10), Ok(()));
        let error = check_range("--batch-size", 0, 1..=10).expect_err("below");
        assert_eq!(
            error.to_string(),
            "invalid setting --batch-size: must be between 1 and 10, got 0"
        );
        assert!(check_range("--batch-size", 11, 1..=10).is_err());
    }

    #[test]
    fn names_the_flag_and_the_rule() {
        let error = check_pool_size(0).expect_err("zero");
        assert_eq!(error.flag, "--db-max-connections");
        assert_eq!(
            error.to_string(),
            "invalid setting --db-max-connections: must be at least 1"
        );
        assert!(check_pool_size(16).is_ok());
    }

    #[test]
    fn names_must_be_one_non_blank_line() {
        assert!(check_name("--region", "eu-1").is_ok());
        assert_eq!(
            check_name("--region", " ").expect_err("blank").rule,
            "must not be empty"
        );
        assert!(check_name("--region", "a\nb").is_err());
    }
}
