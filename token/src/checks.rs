//! The checks a report token goes through, in the one order StatusIngest makes them, walked by
//! one function for every verifier: StatusIngest ([`verify_report`]) and
//! `waybill token verify --explain` ([`explain_report`]), which prints each [`Step`] with the
//! [`Check::remedy`] of the one that failed. Adding a check here adds it to both.
//!
//! form, typ, alg and headers → the key the token names is enrolled and not revoked → the
//! signature → audience, expiry, issue time, lifetime → every bound claim equals the request.
//! What needs the database beyond the key (the order is routed to this partner, the `jti` and
//! the report id are new) is left to StatusIngest's store.

use std::{fmt, future::Future};

use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;

use crate::{
    claims::{Report, ReportClaims},
    error::{RejectReason, TokenError, snippet},
    jws::{MAX_LIFETIME_SECONDS, MAX_SKEW_SECONDS, ParsedToken, check_validity},
};

/// One check of a token, in the order they are made ([`Check::ALL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Present, three base64url parts, `typ`, `alg`, no key-carrying or `crit` header, every
    /// claim present and typed, `kid`/`iss`/`jti` usable identifiers.
    Form,
    /// The key `kid` of partner `iss` is enrolled, not revoked, and an Ed25519 public key.
    Key,
    /// Strict Ed25519 with that key.
    Signature,
    /// `aud` names this environment; `iat`/`exp` within the skew and the lifetime.
    Validity,
    /// Every bound claim equals the request's field.
    Binding,
}

impl Check {
    /// Every check, in the order they are made.
    pub const ALL: [Check; 5] = [
        Self::Form,
        Self::Key,
        Self::Signature,
        Self::Validity,
        Self::Binding,
    ];

    /// What the check looks at, for people.
    pub fn name(self) -> &'static str {
        match self {
            Self::Form => "form, typ, alg and headers",
            Self::Key => "key enrolled and not revoked",
            Self::Signature => "signature (strict Ed25519)",
            Self::Validity => "audience, expiry, issued-at, lifetime",
            Self::Binding => "claims equal the request",
        }
    }

    /// What a partner does when this check fails.
    pub fn remedy(self) -> String {
        match self {
            Self::Form => "sign with alg EdDSA and the header {\"typ\":\"wb-report+jwt\",\"kid\":\"<enrolled key id>\"}; never put a key (jwk, jku, x5u, x5c) or crit in the header; kid, iss and jti must not be empty or contain control characters (NUL, line breaks)".to_owned(),
            Self::Key => "enrol the public key with DispatchAdmin.AddPartnerKey (waybill keys generate prints the call), use its key id as kid and your partner id as iss, and sign with a current key (enrol the new one first when rotating)".to_owned(),
            Self::Signature => "the token was signed with another private key than the one enrolled under this kid, or altered after signing".to_owned(),
            Self::Validity => format!("aud must name this environment; iat = now (your clock within {MAX_SKEW_SECONDS} s of UTC), exp = iat + at most {MAX_LIFETIME_SECONDS} s"),
            Self::Binding => "sign a token for exactly the report you send, every field as a claim: same partner (iss), order (sub), report_id, status, tracking_id, detail, detail_code, action_required and occurred_at (an empty field: the claim empty or left out)".to_owned(),
        }
    }
}

/// How one check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Passed; what it saw (may be empty).
    Passed(&'a str),
    /// Not made; why (`--explain` without a key).
    NotChecked(&'a str),
    /// Failed; the refusal.
    Failed(&'a str),
}

/// One check made, as the walk reports it to its observer.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    /// Which check.
    pub check: Check,
    /// How it went.
    pub outcome: Outcome<'a>,
    /// The token's claims as parsed, NOT authenticated unless the signature passed (none when
    /// the form failed).
    pub claims: Option<&'a ReportClaims>,
}

/// What the verifier's key store says of the key a token names (`iss`, `kid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrolledKey {
    /// Enrolled and not revoked.
    Current(VerifyingKey),
    /// Not to be used, and why.
    Refused(KeyRefusal),
}

impl EnrolledKey {
    /// A stored key: its public key bytes (raw 32 bytes or SPKI PEM/DER) and when it was
    /// revoked, if it was.
    pub fn stored(public_key: &[u8], revoked_at: Option<DateTime<Utc>>) -> Self {
        match revoked_at {
            Some(at) => Self::Refused(KeyRefusal::Revoked(at)),
            None => crate::keys::verifying_key_from_bytes(public_key)
                .map_or(Self::Refused(KeyRefusal::NotAKey), Self::Current),
        }
    }
}

/// Why the key a token names cannot verify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// No such key for this partner.
    Unknown,
    /// Enrolled, revoked at this time.
    Revoked(DateTime<Utc>),
    /// Enrolled, but what was stored is not an Ed25519 public key.
    NotAKey,
}

impl KeyRefusal {
    /// The refusal of key `key_id` of `partner_id` (the token's `kid` and `iss`), naming why.
    pub fn error(self, partner_id: &str, key_id: &str) -> TokenError {
        match self {
            Self::Unknown => TokenError::new(
                RejectReason::UnknownKey,
                format!(
                    "no key {} is enrolled for partner {} (the token's kid and iss)",
                    snippet(key_id),
                    snippet(partner_id)
                ),
            ),
            Self::Revoked(at) => TokenError::new(
                RejectReason::RevokedKey,
                format!(
                    "key {} of partner {} was revoked at {}; sign with a current key",
                    snippet(key_id),
                    snippet(partner_id),
                    at.to_rfc3339()
                ),
            ),
            Self::NotAKey => TokenError::new(
                RejectReason::BadSignature,
                format!(
                    "enrolled key {} is not a valid Ed25519 public key; enrol a new one",
                    snippet(key_id)
                ),
            ),
        }
    }
}

/// A token that passed every check: its claims and the key id that verified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReport {
    /// The authenticated claims.
    pub claims: ReportClaims,
    /// The enrolled key id (`kid`) the signature verified with.
    pub key_id: String,
    /// The key itself, for the verifier to remember.
    pub key: VerifyingKey,
}

/// StatusIngest's walk: every check, in order; `lookup` finds the key the token names
/// (`iss`, `kid`) — its own error (a store failure) is passed through unchanged — and `report`
/// is the request the token travels with. The first failure is returned.
pub async fn verify_report<E, F, Fut>(
    token: &str,
    audience: &str,
    now: DateTime<Utc>,
    lookup: F,
    report: &Report,
) -> Result<VerifiedReport, E>
where
    E: From<TokenError> + fmt::Display,
    F: FnOnce(String, String) -> Fut,
    Fut: Future<Output = Result<EnrolledKey, E>>,
{
    let found = explain_report(
        token,
        audience,
        now,
        |issuer, key_id| async move { lookup(issuer, key_id).await.map(Some) },
        |_| Ok(report.clone()),
        &mut |_| {},
    )
    .await?;
    found.ok_or_else(|| unreachable_unchecked_key().into())
}

/// `--explain`'s walk, and [`verify_report`]'s: the checks in order, each reported to `observe`
/// as it is made. `lookup` may answer `None` (no key given): the key and the signature are then
/// not checked and the rest still is. `report` builds the request to compare from the claims (a
/// field not given compares equal). `Ok(None)`: every check made passed but the signature was
/// not checked.
pub async fn explain_report<E, F, Fut, O>(
    token: &str,
    audience: &str,
    now: DateTime<Utc>,
    lookup: F,
    report: impl FnOnce(&ReportClaims) -> Result<Report, E>,
    observe: &mut O,
) -> Result<Option<VerifiedReport>, E>
where
    E: From<TokenError> + fmt::Display,
    F: FnOnce(String, String) -> Fut,
    Fut: Future<Output = Result<Option<EnrolledKey>, E>>,
    O: FnMut(Step<'_>),
{
    let parsed = if token.is_empty() {
        Err(TokenError::new(
            RejectReason::Malformed,
            "token is required: a report token signed with your enrolled key",
        ))
    } else {
        ParsedToken::parse(token)
    };
    let parsed = parsed.map_err(|error| refuse(observe, Check::Form, None, error))?;
    let claims = parsed.unverified_claims().clone();
    let key_id = parsed.key_id().to_owned();
    let seen = format!("kid {:?}, iss {:?}", key_id, claims.iss);
    observe(step(Check::Form, Outcome::Passed(&seen), &claims));

    let enrolled = lookup(claims.iss.clone(), key_id.clone())
        .await
        .map_err(|error| refuse(observe, Check::Key, Some(&claims), error))?;
    let key = match enrolled {
        None => {
            let why = "not checked (give --key or --database-url)";
            observe(step(Check::Key, Outcome::NotChecked(why), &claims));
            observe(step(Check::Signature, Outcome::NotChecked(why), &claims));
            None
        }
        Some(EnrolledKey::Refused(why)) => {
            let error = why.error(&claims.iss, &key_id).into();
            return Err(refuse(observe, Check::Key, Some(&claims), error));
        }
        Some(EnrolledKey::Current(key)) => {
            observe(step(Check::Key, Outcome::Passed(""), &claims));
            parsed
                .clone()
                .verify_signature(&key)
                .map_err(|error| refuse(observe, Check::Signature, Some(&claims), error))?;
            observe(step(Check::Signature, Outcome::Passed(""), &claims));
            Some(key)
        }
    };

    check_validity(&claims, audience, now)
        .map_err(|error| refuse(observe, Check::Validity, Some(&claims), error))?;
    observe(step(Check::Validity, Outcome::Passed(""), &claims));

    let bound =
        report(&claims).map_err(|error| refuse(observe, Check::Binding, Some(&claims), error))?;
    claims
        .check_bound_to(&bound)
        .map_err(|error| refuse(observe, Check::Binding, Some(&claims), error))?;
    observe(step(Check::Binding, Outcome::Passed(""), &claims));
    Ok(key.map(|key| VerifiedReport {
        claims,
        key_id,
        key,
    }))
}

fn step<'a>(check: Check, outcome: Outcome<'a>, claims: &'a ReportClaims) -> Step<'a> {
    Step {
        check,
        outcome,
        claims: Some(claims),
    }
}

/// Reports `check` failed with `error` and hands the error back.
fn refuse<E: fmt::Display>(
    observe: &mut impl FnMut(Step<'_>),
    check: Check,
    claims: Option<&ReportClaims>,
    error: E,
) -> E {
    let message = error.to_string();
    observe(Step {
        check,
        outcome: Outcome::Failed(&message),
        claims,
    });
    error
}

/// [`verify_report`]'s lookup always answers a key, so its walk always checks the signature.
fn unreachable_unchecked_key() -> TokenError {
    TokenError::new(RejectReason::BadSignature, "the signature was not checked")
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
