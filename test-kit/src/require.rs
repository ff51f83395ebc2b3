//! Tests that need a tool or a broker this machine may lack (a Tansu process, grpcurl, PyJWT)
//! say so instead of passing silently: [`require!`](crate::require) skips with a `SKIPPED:`
//! line on a developer's machine, and **fails** when `WAYBILL_REQUIRE_ALL=1`, which
//! `scripts/test.sh` (and so CI) sets — a suite cannot go green by not running its tests.

/// The environment variable that turns every skip into a failure.
pub const REQUIRE_ALL: &str = "WAYBILL_REQUIRE_ALL";

/// Whether `WAYBILL_REQUIRE_ALL` asks for every test to run (`1`, `true` or `yes`).
pub fn require_all() -> bool {
    std::env::var(REQUIRE_ALL).is_ok_and(|value| matches!(value.trim(), "1" | "true" | "yes"))
}

/// What a test does when `why` (what is missing) stops it: fail when `require_all`, else
/// print `SKIPPED: test: why` on stderr.
pub fn missing_with(require_all: bool, test: &str, why: &str) {
    assert!(
        !require_all,
        "{test} cannot run: {why} ({REQUIRE_ALL}=1 makes a skip a failure; scripts/test.sh \
         installs what the tests need)"
    );
    eprintln!("SKIPPED: {test}: {why}");
}

/// [`missing_with`] as `WAYBILL_REQUIRE_ALL` says.
pub fn missing(test: &str, why: &str) {
    missing_with(require_all(), test, why);
}

/// `require!(condition, "what is missing, {}", args…)`: returns from the calling test when
/// `condition` is false — skipped with a message, or failed when `WAYBILL_REQUIRE_ALL=1`.
#[macro_export]
macro_rules! require {
    ($available:expr, $($why:tt)+) => {
        if !$available {
            $crate::require::missing(module_path!(), &format!($($why)+));
            return;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::missing_with;

    #[test]
    fn a_missing_tool_is_a_skip_by_default() {
        missing_with(false, "t", "grpcurl not on PATH");
    }

    #[test]
    #[should_panic(expected = "t cannot run: grpcurl not on PATH (WAYBILL_REQUIRE_ALL=1")]
    fn with_require_all_a_missing_tool_fails_the_test() {
        missing_with(true, "t", "grpcurl not on PATH");
    }
}
