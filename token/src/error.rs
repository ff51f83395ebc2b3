//! Why a token was refused: one [`RejectReason`] per check, so that operators can count
//! rejections by reason and `waybill token verify --explain` can say which check failed.

use std::fmt;

/// The check a token failed. Stable, lower-case snake names ([`RejectReason::as_str`]) are
/// what metrics and logs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Not three base64url parts, bad base64, bad JSON, a missing or mistyped claim, too long;
    /// or a `kid`, `iss` or `jti` that is empty, too long or holds a control character (NUL).
    Malformed,
    /// The `typ` header is not `wb-report+jwt`.
    WrongType,
    /// The `alg` header is not `EdDSA` (or its alias `Ed25519`): `none`, `HS256`, `RS256`, …
    WrongAlgorithm,
    /// The header carries a key or a key reference (`jwk`, `jku`, `x5u`, `x5c`): never honoured.
    KeyInHeader,
    /// The header has `crit`: no extension is understood, so none may be critical.
    CriticalHeader,
    /// No key with this `kid` is enrolled for the partner the token names.
    UnknownKey,
    /// The key was revoked.
    RevokedKey,
    /// The signature does not verify (strict Ed25519) with the enrolled key.
    BadSignature,
    /// The `aud` claim does not name this Waybill environment.
    WrongAudience,
    /// `exp` is in the past (beyond the allowed clock skew).
    Expired,
    /// `iat` (or `nbf`) is in the future beyond the allowed clock skew.
    IssuedInFuture,
    /// `exp - iat` is longer than the allowed lifetime (5 minutes), or not positive.
    LifetimeTooLong,
    /// A bound claim differs from the request field it must equal.
    ClaimMismatch,
    /// The token id was seen before.
    Replayed,
}

impl RejectReason {
    /// Every reason, for exporting zero counters.
    pub const ALL: [RejectReason; 14] = [
        Self::Malformed,
        Self::WrongType,
        Self::WrongAlgorithm,
        Self::KeyInHeader,
        Self::CriticalHeader,
        Self::UnknownKey,
        Self::RevokedKey,
        Self::BadSignature,
        Self::WrongAudience,
        Self::Expired,
        Self::IssuedInFuture,
        Self::LifetimeTooLong,
        Self::ClaimMismatch,
        Self::Replayed,
    ];

    /// The stable name used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::WrongType => "wrong_type",
            Self::WrongAlgorithm => "wrong_algorithm",
            Self::KeyInHeader => "key_in_header",
            Self::CriticalHeader => "critical_header",
            Self::UnknownKey => "unknown_key",
            Self::RevokedKey => "revoked_key",
            Self::BadSignature => "bad_signature",
            Self::WrongAudience => "wrong_audience",
            Self::Expired => "expired",
            Self::IssuedInFuture => "issued_in_future",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::ClaimMismatch => "claim_mismatch",
            Self::Replayed => "replayed",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused token: the reason and a short explanation a partner can act on. The explanation
/// never contains the token, and echoes at most a bounded, escaped snippet of a claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct TokenError {
    /// Which check failed.
    pub reason: RejectReason,
    /// What exactly, for people.
    pub detail: String,
}

impl TokenError {
    /// A refusal for `reason`.
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// A value from a token or a request, safe to put into a message: escaped (`{:?}`) and cut to
/// 64 characters.
pub fn snippet(value: &str) -> String {
    const MAX: usize = 64;
    if value.chars().count() <= MAX {
        format!("{value:?}")
    } else {
        let cut: String = value.chars().take(MAX).collect();
        format!("{cut:?}…")
    }
}

/// Why a key file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_are_unique() {
        let mut names: Vec<_> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RejectReason::ALL.len());
    }

    #[test]
    fn snippets_are_bounded_and_escaped() {
        assert_eq!(snippet("a\"b\n"), "\"a\\\"b\\n\"");
        let long = "x".repeat(500);
        assert!(snippet(&long).len() < 80);
    }
}
