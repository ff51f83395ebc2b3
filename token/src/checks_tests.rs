#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;

use chrono::{TimeZone, Utc};
use ed25519_dalek::SigningKey;
use futures::executor::block_on;

use super::*;
use crate::jws::TokenSigner;

const AUDIENCE: &str = "waybill-test";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 10, 15, 0).unwrap()
}

fn signer() -> TokenSigner {
    TokenSigner::new(SigningKey::from_bytes(&[7; 32]), "acme-2026")
}

fn report() -> Report {
    Report {
        partner_id: "acme".into(),
        order_id: "0193a1b2-0000-7000-8000-000000000001".into(),
        report_id: "r-1".into(),
        status: "SHIPPED".into(),
        tracking_id: "1Z999".into(),
        detail: String::new(),
        detail_code: String::new(),
        action_required: false,
        occurred_at: now(),
    }
}

fn token() -> String {
    signer().sign(&ReportClaims::new(&report(), AUDIENCE, now(), 120, "t-1"))
}

/// A store failure, passed through the walk unchanged.
#[derive(Debug, PartialEq)]
enum Failure {
    Refused(TokenError),
    StoreDown,
}

impl From<TokenError> for Failure {
    fn from(error: TokenError) -> Self {
        Self::Refused(error)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(error) => error.fmt(f),
            Self::StoreDown => f.write_str("store down"),
        }
    }
}

fn reason(result: Result<VerifiedReport, Failure>) -> RejectReason {
    match result {
        Err(Failure::Refused(error)) => error.reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// [`verify_report`] with the key store answering `enrolled`.
fn verify(
    token: &str,
    enrolled: EnrolledKey,
    at: DateTime<Utc>,
) -> Result<VerifiedReport, Failure> {
    block_on(verify_report(
        token,
        AUDIENCE,
        at,
        |_, _| async { Ok(enrolled) },
        &report(),
    ))
}

/// [`explain_report`]'s steps as (check, passed / not checked / failed).
fn explain(token: &str, key: Option<EnrolledKey>, request: Report) -> Vec<(Check, &'static str)> {
    let steps = RefCell::new(Vec::new());
    let _ = block_on(explain_report::<Failure, _, _, _>(
        token,
        AUDIENCE,
        now(),
        |_, _| async { Ok(key) },
        |_| Ok(request),
        &mut |step| {
            let outcome = match step.outcome {
                Outcome::Passed(_) => "passed",
                Outcome::NotChecked(_) => "not checked",
                Outcome::Failed(_) => "failed",
            };
            steps.borrow_mut().push((step.check, outcome));
        },
    ));
    steps.into_inner()
}

#[test]
fn a_good_token_passes_every_check_in_order() {
    let verified = verify(
        &token(),
        EnrolledKey::Current(signer().verifying_key()),
        now(),
    )
    .unwrap();
    assert_eq!(verified.key_id, "acme-2026");
    assert_eq!(verified.claims.jti, "t-1");
    let steps = explain(
        &token(),
        Some(EnrolledKey::Current(signer().verifying_key())),
        report(),
    );
    let expected: Vec<_> = Check::ALL.iter().map(|check| (*check, "passed")).collect();
    assert_eq!(steps, expected);
}

#[test]
fn the_lookup_is_asked_for_the_tokens_issuer_and_key_id() {
    let asked = RefCell::new(None);
    let result = block_on(verify_report::<Failure, _, _>(
        &token(),
        AUDIENCE,
        now(),
        |issuer, key_id| {
            *asked.borrow_mut() = Some((issuer, key_id));
            async { Ok(EnrolledKey::Current(signer().verifying_key())) }
        },
        &report(),
    ));
    assert!(result.is_ok());
    assert_eq!(
        asked.into_inner(),
        Some(("acme".to_owned(), "acme-2026".to_owned()))
    );
}

#[test]
fn an_empty_or_garbled_token_fails_the_form_and_nothing_after() {
    let key = EnrolledKey::Current(signer().verifying_key());
    let Err(Failure::Refused(error)) = verify("", key.clone(), now()) else {
        panic!("an empty token must be refused");
    };
    assert_eq!(error.reason, RejectReason::Malformed);
    assert!(error.detail.contains("token is required"), "{error}");
    assert_eq!(
        reason(verify("a.b", key.clone(), now())),
        RejectReason::Malformed
    );
    assert_eq!(
        explain("a.b", Some(key), report()),
        vec![(Check::Form, "failed")]
    );
}

#[test]
fn an_unknown_revoked_or_unusable_key_fails_the_key_check_before_the_signature() {
    assert_eq!(
        reason(verify(
            &token(),
            EnrolledKey::Refused(KeyRefusal::Unknown),
            now()
        )),
        RejectReason::UnknownKey
    );
    let revoked = EnrolledKey::Refused(KeyRefusal::Revoked(now()));
    assert_eq!(
        reason(verify(&token(), revoked.clone(), now())),
        RejectReason::RevokedKey
    );
    assert_eq!(
        reason(verify(
            &token(),
            EnrolledKey::Refused(KeyRefusal::NotAKey),
            now()
        )),
        RejectReason::BadSignature
    );
    assert_eq!(
        explain(&token(), Some(revoked), report()),
        vec![(Check::Form, "passed"), (Check::Key, "failed")]
    );
}

#[test]
fn a_stored_key_is_current_revoked_or_not_a_key() {
    let public = signer().verifying_key();
    assert_eq!(
        EnrolledKey::stored(public.as_bytes(), None),
        EnrolledKey::Current(public)
    );
    assert_eq!(
        EnrolledKey::stored(public.as_bytes(), Some(now())),
        EnrolledKey::Refused(KeyRefusal::Revoked(now()))
    );
    assert_eq!(
        EnrolledKey::stored(b"not a key", None),
        EnrolledKey::Refused(KeyRefusal::NotAKey)
    );
}

#[test]
fn another_key_fails_the_signature_before_time_and_binding() {
    let other = TokenSigner::new(SigningKey::from_bytes(&[9; 32]), "acme-2026").verifying_key();
    // Expired and bound to another request too: the signature is the check that refuses.
    let late = now() + chrono::Duration::hours(1);
    assert_eq!(
        reason(verify(&token(), EnrolledKey::Current(other), late)),
        RejectReason::BadSignature
    );
}

#[test]
fn an_expired_token_fails_validity_and_a_changed_field_fails_binding() {
    let key = EnrolledKey::Current(signer().verifying_key());
    let late = now() + chrono::Duration::hours(1);
    assert_eq!(
        reason(verify(&token(), key.clone(), late)),
        RejectReason::Expired
    );
    let changed = Report {
        tracking_id: "1Z000".into(),
        ..report()
    };
    assert_eq!(
        explain(&token(), Some(key), changed),
        vec![
            (Check::Form, "passed"),
            (Check::Key, "passed"),
            (Check::Signature, "passed"),
            (Check::Validity, "passed"),
            (Check::Binding, "failed"),
        ]
    );
}

#[test]
fn without_a_key_the_signature_is_not_checked_and_the_rest_is() {
    let steps = explain(&token(), None, report());
    assert_eq!(
        steps,
        vec![
            (Check::Form, "passed"),
            (Check::Key, "not checked"),
            (Check::Signature, "not checked"),
            (Check::Validity, "passed"),
            (Check::Binding, "passed"),
        ]
    );
    let result = block_on(explain_report::<Failure, _, _, _>(
        &token(),
        AUDIENCE,
        now(),
        |_, _| async { Ok(None) },
        |_| Ok(report()),
        &mut |_| {},
    ));
    assert_eq!(
        result,
        Ok(None),
        "no verified report without a signature check"
    );
}

#[test]
fn a_lookup_failure_is_passed_through_unchanged() {
    let result = block_on(verify_report::<Failure, _, _>(
        &token(),
        AUDIENCE,
        now(),
        |_, _| async { Err(Failure::StoreDown) },
        &report(),
    ));
    assert_eq!(result, Err(Failure::StoreDown));
}

#[test]
fn every_check_has_a_name_and_a_remedy() {
    for check in Check::ALL {
        assert!(!check.name().is_empty());
        assert!(check.remedy().len() > 20, "{check:?}");
    }
}
