//! What a report token says ([`ReportClaims`]), the report it must be bound to ([`Report`]), and
//! the rules a claim must follow before a verifier uses it.
//!
//! Every field of a `ReportStatus` request that the partner says is a claim of its own, compared
//! by exact equality ([`ReportClaims::check_bound_to`]); nothing a partner reports travels
//! unsigned. Each field is its own claim (no digest over a canonical serialisation) so that a
//! partner signs with any stock JWT library:
//!
//! | request field | claim | equality |
//! | --- | --- | --- |
//! | `partner_id` | `iss` | exact string |
//! | `correlation_id` | `sub` | exact string |
//! | `report_id` | `report_id` | exact string |
//! | `status` | `status` | the short name (`SHIPPED`) |
//! | `tracking_id` | `tracking_id` | exact string; an absent or `null` claim is `""` |
//! | `detail` | `detail` | exact string; an absent or `null` claim is `""` |
//! | `detail_code` | `detail_code` | exact string; an absent or `null` claim is `""` |
//! | `action_required` | `action_required` | JSON boolean; an absent or `null` claim is `false` |
//! | `occurred_at` | `occurred_at` | RFC 3339, the same instant |
//!
//! "Exact" means code point for code point: no trimming, no case folding, no Unicode
//! normalisation; line breaks in `detail` are part of the text (JSON `\n`, `\r\n`). A claim of
//! the wrong JSON type (a number for `detail`, the string `"true"` for `action_required`) makes
//! the token malformed. The optional claims may be absent, so a token signed before these claims
//! existed still verifies for a report without detail, detail code or action required.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{RejectReason, TokenError, snippet};

/// Longest `kid` header, in bytes.
pub const MAX_KEY_ID_BYTES: usize = 64;
/// Longest `iss` claim, in bytes (a partner id is at most 63).
pub const MAX_ISSUER_BYTES: usize = 64;
/// Longest `jti` claim, in bytes.
pub const MAX_TOKEN_ID_BYTES: usize = 128;

/// What a report token says. Registered claims keep their JWT names; the report's own fields
/// are private claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportClaims {
    /// Issuer: the partner id.
    pub iss: String,
    /// Subject: the order id (the correlation id of the Kafka message).
    pub sub: String,
    /// Audience: the Waybill environment the token is meant for (`waybill-production`, …).
    pub aud: Audience,
    /// Issued at, seconds since the Unix epoch.
    pub iat: i64,
    /// Expires at, seconds since the Unix epoch; at most 5 minutes after `iat`.
    pub exp: i64,
    /// Not before (optional), seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Unique token id: accepted once (replay guard).
    pub jti: String,
    /// The partner's unique id of this report; a repeated report id is a duplicate.
    pub report_id: String,
    /// `RECEIVED_BY_PARTNER`, `SHIPPED`, `DELIVERED`, `EXCEPTION` or `REJECTED_BY_PARTNER`.
    pub status: String,
    /// The tracking id reported (empty, absent or `null` when none).
    #[serde(default, deserialize_with = "null_as_default")]
    pub tracking_id: String,
    /// The detail text reported (empty, absent or `null` when none).
    #[serde(default, deserialize_with = "null_as_default")]
    pub detail: String,
    /// The machine-readable detail code reported (empty, absent or `null` when none).
    #[serde(default, deserialize_with = "null_as_default")]
    pub detail_code: String,
    /// Whether the report says someone must act (absent or `null`: `false`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub action_required: bool,
    /// When it happened, RFC 3339 (`2026-11-22T10:15:00Z`, fractions allowed).
    pub occurred_at: String,
}

/// An absent claim (`#[serde(default)]`) and a `null` one both read as the type's default.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The `aud` claim: one string, or an array of strings (both are valid JWT).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// One audience.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Audience {
    /// Whether `audience` is among them.
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Self::One(one) => one == audience,
            Self::Many(many) => many.iter().any(|a| a == audience),
        }
    }
}

/// The report a token is made for, as the request carries it: every field the partner says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The reporting partner.
    pub partner_id: String,
    /// The order (correlation id).
    pub order_id: String,
    /// The partner's report id.
    pub report_id: String,
    /// Status short name (`SHIPPED`).
    pub status: String,
    /// Tracking id; may be empty.
    pub tracking_id: String,
    /// Text for people; may be empty.
    pub detail: String,
    /// Machine-readable reason (`ADDRESS_NOT_FOUND`); may be empty.
    pub detail_code: String,
    /// Someone (customer or operator) must act.
    pub action_required: bool,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
}

impl ReportClaims {
    /// Claims for `report`, issued at `now`, valid for `lifetime_seconds`, with token id `jti`.
    /// Every report claim is written, the empty ones included.
    pub fn new(
        report: &Report,
        audience: &str,
        now: DateTime<Utc>,
        lifetime_seconds: i64,
        jti: impl Into<String>,
    ) -> Self {
        let iat = now.timestamp();
        Self {
            iss: report.partner_id.clone(),
            sub: report.order_id.clone(),
            aud: Audience::One(audience.to_owned()),
            iat,
            exp: iat.saturating_add(lifetime_seconds),
            nbf: None,
            jti: jti.into(),
            report_id: report.report_id.clone(),
            status: report.status.clone(),
            tracking_id: report.tracking_id.clone(),
            detail: report.detail.clone(),
            detail_code: report.detail_code.clone(),
            action_required: report.action_required,
            occurred_at: report
                .occurred_at
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        }
    }

    /// `occurred_at` as an instant (parsing was checked when the token was parsed).
    pub fn occurred_at(&self) -> Result<DateTime<Utc>, TokenError> {
        DateTime::parse_from_rfc3339(&self.occurred_at)
            .map(|at| at.with_timezone(&Utc))
            .map_err(|_| {
                TokenError::new(
                    RejectReason::Malformed,
                    format!(
                        "claim occurred_at {} is not an RFC 3339 time",
                        snippet(&self.occurred_at)
                    ),
                )
            })
    }

    /// The rules on the claims a verifier uses before the signature is checked, or stores: `iss`
    /// (with `kid`, finds the key) and `jti` (the replay guard). See [`check_identifier`].
    pub fn check_identifiers(&self) -> Result<(), TokenError> {
        check_identifier("claim iss (your partner id)", &self.iss, MAX_ISSUER_BYTES)?;
        check_identifier(
            "claim jti (a unique token id)",
            &self.jti,
            MAX_TOKEN_ID_BYTES,
        )
    }

    /// Every bound claim must equal the request's field; the first that does not is named.
    pub fn check_bound_to(&self, report: &Report) -> Result<(), TokenError> {
        let pairs = [
            ("iss", &self.iss, "partner_id", &report.partner_id),
            ("sub", &self.sub, "correlation_id", &report.order_id),
            ("report_id", &self.report_id, "report_id", &report.report_id),
            ("status", &self.status, "status", &report.status),
            (
                "tracking_id",
                &self.tracking_id,
                "tracking_id",
                &report.tracking_id,
            ),
            ("detail", &self.detail, "detail", &report.detail),
            (
                "detail_code",
                &self.detail_code,
                "detail_code",
                &report.detail_code,
            ),
        ];
        for (claim, in_token, field, in_request) in pairs {
            if in_token != in_request {
                return Err(mismatch(
                    claim,
                    &snippet(in_token),
                    field,
                    &snippet(in_request),
                ));
            }
        }
        if self.action_required != report.action_required {
            return Err(mismatch(
                "action_required",
                &self.action_required.to_string(),
                "action_required",
                &report.action_required.to_string(),
            ));
        }
        let occurred_at = self.occurred_at()?;
        if occurred_at != report.occurred_at {
            return Err(mismatch(
                "occurred_at",
                &occurred_at.to_rfc3339(),
                "occurred_at",
                &report.occurred_at.to_rfc3339(),
            ));
        }
        Ok(())
    }
}

/// A bound claim that differs from its request field (both values already quoted or plain).
fn mismatch(claim: &str, in_token: &str, field: &str, in_request: &str) -> TokenError {
    TokenError::new(
        RejectReason::ClaimMismatch,
        format!("claim {claim} is {in_token} but the request's {field} is {in_request}"),
    )
}

/// A value a verifier looks a key up with or stores (`kid`, `iss`, `jti`), named `what` in the
/// refusal: 1 to `max_bytes` bytes and no control character. NUL above all: Postgres cannot
/// hold it in `text`, so it must be refused as a malformed token before any query, on every
/// backend alike; the other control characters (line breaks, escapes) have no place in an id
/// either.
pub fn check_identifier(what: &str, value: &str, max_bytes: usize) -> Result<(), TokenError> {
    let malformed = |detail: String| Err(TokenError::new(RejectReason::Malformed, detail));
    if value.is_empty() {
        return malformed(format!("{what} is missing or empty"));
    }
    if value.len() > max_bytes {
        return malformed(format!(
            "{what} is {} bytes, more than {max_bytes}",
            value.len()
        ));
    }
    if let Some(position) = value.chars().position(char::is_control) {
        return malformed(format!(
            "{what} must not contain control characters (NUL, line breaks, …); found one at character {position}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_refuse_nul_controls_empty_and_long_naming_the_claim() {
        for (value, expected) in [
            ("", "is missing or empty"),
            ("ac\0me", "control characters"),
            ("acme\n", "control characters"),
            ("\u{85}", "control characters"),
        ] {
            let error = check_identifier("claim iss", value, 8).expect_err(value);
            assert_eq!(error.reason, RejectReason::Malformed);
            assert!(error.detail.starts_with("claim iss "), "{error}");
            assert!(error.detail.contains(expected), "{error}");
        }
        let long = "x".repeat(10_000);
        let error = check_identifier("claim jti", &long, 128).expect_err("long");
        assert!(error.detail.len() < 100, "bounded: {error}");
        assert!(check_identifier("header kid", "acme-2026", 64).is_ok());
        assert!(check_identifier("header kid", "clé-2026", 64).is_ok());
    }

    #[test]
    fn optional_claims_read_absent_and_null_as_none() {
        let base = serde_json::json!({
            "iss": "acme", "sub": "o", "aud": "a", "iat": 1, "exp": 2, "jti": "j",
            "report_id": "r", "status": "SHIPPED", "occurred_at": "2026-11-22T10:15:00Z",
        });
        let absent: ReportClaims = serde_json::from_value(base.clone()).expect("absent");
        let mut with_null = base.clone();
        for name in ["tracking_id", "detail", "detail_code", "action_required"] {
            with_null[name] = serde_json::Value::Null;
        }
        let null: ReportClaims = serde_json::from_value(with_null).expect("null");
        assert_eq!(absent, null);
        assert_eq!(
            (absent.detail.as_str(), absent.detail_code.as_str()),
            ("", "")
        );
        assert!(!absent.action_required);
        // A wrong JSON type is not silently read as none.
        for (name, value) in [
            ("action_required", serde_json::json!("true")),
            ("detail", serde_json::json!(1)),
            ("detail_code", serde_json::json!(["A"])),
        ] {
            let mut wrong = base.clone();
            wrong[name] = value;
            assert!(
                serde_json::from_value::<ReportClaims>(wrong).is_err(),
                "{name}"
            );
        }
    }
}
