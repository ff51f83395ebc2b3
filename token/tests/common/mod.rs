//! What the token tests share: a fixed `now`, a report with every field set, signers, and
//! tokens made by hand.
#![allow(dead_code)]

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, TimeZone, Utc};
use waybill_token::{RejectReason, Report, ReportClaims, SigningKey, TokenSigner, verify};

/// The audience the tests verify for.
pub const AUDIENCE: &str = "waybill-test";

/// The fixed time of every check.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 10, 15, 0)
        .single()
        .expect("valid time")
}

/// A report with every field set: a detail with a line break and characters outside ASCII.
pub fn report() -> Report {
    Report {
        partner_id: "acme".to_owned(),
        order_id: "0193a3f0-0000-7000-8000-000000000001".to_owned(),
        report_id: "r-1".to_owned(),
        status: "SHIPPED".to_owned(),
        tracking_id: "1Z999".to_owned(),
        detail: "left the depot\r\nbay 4 \u{e9}\u{1f4e6}".to_owned(),
        detail_code: "IN_TRANSIT".to_owned(),
        action_required: true,
        occurred_at: now() - chrono::Duration::milliseconds(1_250),
    }
}

/// A signer with key `seed`, enrolled as `acme-2026`.
pub fn signer(seed: u8) -> TokenSigner {
    TokenSigner::new(SigningKey::from_bytes(&[seed; 32]), "acme-2026")
}

/// The claims of [`report`] at [`now`].
pub fn claims() -> ReportClaims {
    ReportClaims::new(&report(), AUDIENCE, now(), 120, "jti-1")
}

/// Why `token` is refused for `report` with key `key_seed` at `at`.
pub fn refusal(token: &str, key_seed: u8, at: DateTime<Utc>, report: &Report) -> RejectReason {
    verify(
        token,
        &signer(key_seed).verifying_key(),
        AUDIENCE,
        report,
        at,
    )
    .expect_err("token must be refused")
    .reason
}

/// A token with any header and claims, signed properly with key 1.
pub fn hand_made(header: serde_json::Value, claims: serde_json::Value) -> String {
    use ed25519_dalek::Signer as _;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = SigningKey::from_bytes(&[1; 32]).sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}
