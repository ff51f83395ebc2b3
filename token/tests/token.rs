//! The token checks, each refusal by its reason, at a fixed `now`; tokens from PyJWT (an
//! independent implementation) accepted; the parser never panics on arbitrary input.

use std::{path::PathBuf, process::Command};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::json;
use waybill_token::{
    ParsedToken, RejectReason, Report, ReportClaims, SigningKey, TokenSigner, keys, verify,
};

const AUDIENCE: &str = "waybill-test";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 10, 15, 0)
        .single()
        .expect("valid time")
}

fn report() -> Report {
    Report {
        partner_id: "acme".to_owned(),
        order_id: "0193a3f0-0000-7000-8000-000000000001".to_owned(),
        report_id: "r-1".to_owned(),
        status: "SHIPPED".to_owned(),
        tracking_id: "1Z999".to_owned(),
        occurred_at: now() - chrono::Duration::milliseconds(1_250),
    }
}

fn signer(seed: u8) -> TokenSigner {
    TokenSigner::new(SigningKey::from_bytes(&[seed; 32]), "acme-2026")
}

fn claims() -> ReportClaims {
    ReportClaims::new(&report(), AUDIENCE, now(), 120, "jti-1")
}

fn refusal(token: &str, key_seed: u8, at: DateTime<Utc>, report: &Report) -> RejectReason {
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
fn hand_made(header: serde_json::Value, claims: serde_json::Value) -> String {
    use ed25519_dalek::Signer as _;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = SigningKey::from_bytes(&[1; 32]).sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

#[test]
fn a_token_we_sign_verifies_and_binds_the_report() {
    let token = signer(1).sign(&claims());
    let verified = verify(
        &token,
        &signer(1).verifying_key(),
        AUDIENCE,
        &report(),
        now(),
    )
    .expect("valid token");
    assert_eq!(verified.jti, "jti-1");
    let parsed = ParsedToken::parse(&token).expect("parses");
    assert_eq!(parsed.key_id(), "acme-2026");
    assert_eq!(parsed.issuer(), "acme");
}

#[test]
fn each_check_refuses_with_its_reason() {
    let token = signer(1).sign(&claims());
    // Forged: signed by another key.
    assert_eq!(
        refusal(&token, 2, now(), &report()),
        RejectReason::BadSignature
    );
    // A flipped claim byte breaks the signature.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut forged_claims = claims();
    forged_claims.status = "DELIVERED".to_owned();
    parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).expect("json"));
    assert_eq!(
        refusal(&parts.join("."), 1, now(), &report()),
        RejectReason::BadSignature
    );
    // Audience.
    let other_env = signer(1).sign(&ReportClaims::new(
        &report(),
        "waybill-sandbox",
        now(),
        120,
        "j",
    ));
    assert_eq!(
        refusal(&other_env, 1, now(), &report()),
        RejectReason::WrongAudience
    );
    // Expiry: valid until exp + 60 s skew.
    let exp = now() + chrono::Duration::seconds(120);
    assert!(
        verify(
            &token,
            &signer(1).verifying_key(),
            AUDIENCE,
            &report(),
            exp + chrono::Duration::seconds(59)
        )
        .is_ok()
    );
    assert_eq!(
        refusal(&token, 1, exp + chrono::Duration::seconds(60), &report()),
        RejectReason::Expired
    );
    // Issued in the future beyond the skew (a verifier whose clock is 61 s behind).
    assert!(
        verify(
            &token,
            &signer(1).verifying_key(),
            AUDIENCE,
            &report(),
            now() - chrono::Duration::seconds(60)
        )
        .is_ok()
    );
    assert_eq!(
        refusal(&token, 1, now() - chrono::Duration::seconds(61), &report()),
        RejectReason::IssuedInFuture
    );
    // Lifetime over 5 minutes.
    let long = signer(1).sign(&ReportClaims::new(&report(), AUDIENCE, now(), 301, "j"));
    assert_eq!(
        refusal(&long, 1, now(), &report()),
        RejectReason::LifetimeTooLong
    );
    // Every bound claim.
    let mismatches: [fn(&mut Report); 6] = [
        |r| r.partner_id = "other".to_owned(),
        |r| r.order_id = "0193a3f0-0000-7000-8000-000000000002".to_owned(),
        |r| r.report_id = "r-2".to_owned(),
        |r| r.status = "DELIVERED".to_owned(),
        |r| r.tracking_id = "1Z000".to_owned(),
        |r| r.occurred_at += chrono::Duration::microseconds(1),
    ];
    for change in mismatches {
        let mut request = report();
        change(&mut request);
        assert_eq!(
            refusal(&token, 1, now(), &request),
            RejectReason::ClaimMismatch
        );
    }
}

#[test]
fn headers_decide_before_any_key_is_used() {
    let body = serde_json::to_value(claims()).expect("json");
    let cases = [
        (
            json!({"alg": "none", "typ": "wb-report+jwt", "kid": "k"}),
            RejectReason::WrongAlgorithm,
        ),
        (
            json!({"alg": "HS256", "typ": "wb-report+jwt", "kid": "k"}),
            RejectReason::WrongAlgorithm,
        ),
        (
            json!({"typ": "wb-report+jwt", "kid": "k"}),
            RejectReason::WrongAlgorithm,
        ),
        (json!({"alg": "EdDSA", "kid": "k"}), RejectReason::WrongType),
        (
            json!({"alg": "EdDSA", "typ": "JWT", "kid": "k"}),
            RejectReason::WrongType,
        ),
        (
            json!({"alg": "EdDSA", "typ": "wb-report+jwt"}),
            RejectReason::Malformed,
        ),
        (
            json!({"alg": "EdDSA", "typ": "wb-report+jwt", "kid": "k", "crit": ["exp"]}),
            RejectReason::CriticalHeader,
        ),
        (
            json!({"alg": "EdDSA", "typ": "wb-report+jwt", "kid": "k", "jku": "https://evil"}),
            RejectReason::KeyInHeader,
        ),
        (
            json!({"alg": "EdDSA", "typ": "wb-report+jwt", "kid": "k", "x5u": "https://evil"}),
            RejectReason::KeyInHeader,
        ),
        (
            json!({"alg": "EdDSA", "typ": "wb-report+jwt", "kid": "k", "x5c": ["MII"]}),
            RejectReason::KeyInHeader,
        ),
        (
            json!({"alg": "EdDSA", "typ": "wb-report+jwt", "kid": "k", "jwk": {"kty": "OKP"}}),
            RejectReason::KeyInHeader,
        ),
    ];
    for (header, reason) in cases {
        let token = hand_made(header.clone(), body.clone());
        let error = ParsedToken::parse(&token).expect_err("refused");
        assert_eq!(error.reason, reason, "{header}: {error}");
    }
    // The alias of RFC 9864 and the media-type form of typ are accepted.
    let alias = hand_made(
        json!({"alg": "Ed25519", "typ": "application/wb-report+jwt", "kid": "k"}),
        body.clone(),
    );
    assert!(ParsedToken::parse(&alias).is_ok());
    // A duplicated header name is ambiguous: refused.
    let header = r#"{"alg":"EdDSA","alg":"none","typ":"wb-report+jwt","kid":"k"}"#;
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(body.to_string()),
        URL_SAFE_NO_PAD.encode([0_u8; 64])
    );
    assert_eq!(
        ParsedToken::parse(&token).expect_err("dup").reason,
        RejectReason::Malformed
    );
    // A missing claim is malformed, and the message names it.
    let mut partial = body.clone();
    partial.as_object_mut().expect("object").remove("report_id");
    let error = ParsedToken::parse(&hand_made(
        json!({"alg": "EdDSA", "typ": "wb-report+jwt", "kid": "k"}),
        partial,
    ))
    .expect_err("missing");
    assert_eq!(error.reason, RejectReason::Malformed);
    assert!(error.detail.contains("report_id"), "{error}");
}

#[test]
fn non_canonical_signatures_are_refused_strictly() {
    // S + L (the group order) verifies under lax Ed25519 but is malleable: verify_strict refuses.
    let token = signer(1).sign(&claims());
    let (input, signature) = token.rsplit_once('.').expect("three parts");
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).expect("base64");
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0_u16;
    for (s, l) in bytes[32..].iter_mut().zip(L) {
        let sum = u16::from(*s) + u16::from(l) + carry;
        *s = (sum & 0xff) as u8;
        carry = sum >> 8;
    }
    let malleated = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&bytes));
    assert_eq!(
        refusal(&malleated, 1, now(), &report()),
        RejectReason::BadSignature
    );
}

#[test]
fn a_committed_pyjwt_vector_is_accepted() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let vector: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("pyjwt-vector.json")).expect("vector file"),
    )
    .expect("json");
    let key = keys::verifying_key_from_bytes(
        &std::fs::read(dir.join("vector-public.pem")).expect("public key"),
    )
    .expect("spki pem");
    let claims = &vector["claims"];
    let text = |name: &str| claims[name].as_str().expect("string claim").to_owned();
    let request = Report {
        partner_id: text("iss"),
        order_id: text("sub"),
        report_id: text("report_id"),
        status: text("status"),
        tracking_id: text("tracking_id"),
        occurred_at: DateTime::parse_from_rfc3339(&text("occurred_at"))
            .expect("rfc3339")
            .to_utc(),
    };
    let at = DateTime::from_timestamp(vector["now"].as_i64().expect("now"), 0).expect("time");
    let token = vector["token"].as_str().expect("token");
    let verified = verify(
        token,
        &key,
        vector["audience"].as_str().expect("aud"),
        &request,
        at,
    )
    .expect("PyJWT's token is accepted");
    assert_eq!(verified.jti, text("jti"));
    assert_eq!(
        ParsedToken::parse(token).expect("parses").key_id(),
        vector["key_id"].as_str().expect("kid")
    );
}

/// `python3` with PyJWT, installing it with pip if missing; `None` only if that is impossible.
fn python_with_pyjwt() -> Option<&'static str> {
    let has_pyjwt = || {
        Command::new("python3")
            .args(["-c", "import jwt, cryptography"])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if has_pyjwt() {
        return Some("python3");
    }
    let _ = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "PyJWT[crypto]"])
        .status();
    has_pyjwt().then_some("python3")
}

fn pyjwt_token(python: &str, key_pem: &str, claims: &serde_json::Value, variant: &str) -> String {
    let dir = std::env::temp_dir().join(format!(
        "waybill-token-test-{}-{}",
        std::process::id(),
        variant
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key_path = dir.join("key.pem");
    std::fs::write(&key_path, key_pem).expect("write key");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/pyjwt_sign.py");
    let out = Command::new(python)
        .arg(script)
        .arg(&key_path)
        .arg("acme-2026")
        .arg(claims.to_string())
        .arg(variant)
        .output()
        .expect("run python");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "pyjwt_sign.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

#[test]
fn tokens_signed_by_pyjwt_are_accepted_and_its_forgeries_refused() {
    let Some(python) = python_with_pyjwt() else {
        eprintln!("SKIPPED: python3 with PyJWT[crypto] is not available and pip cannot install it");
        return;
    };
    let key = SigningKey::from_bytes(&[9; 32]);
    let pem = keys::signing_key_to_pem(&key).expect("pem");
    let public = key.verifying_key();
    let body = serde_json::to_value(claims()).expect("json");

    let token = pyjwt_token(python, &pem, &body, "eddsa");
    let verified =
        verify(&token, &public, AUDIENCE, &report(), now()).expect("PyJWT token accepted");
    assert_eq!(verified.report_id, "r-1");

    for (variant, reason) in [
        ("none", RejectReason::WrongAlgorithm),
        ("hs256", RejectReason::WrongAlgorithm),
        ("jwk", RejectReason::KeyInHeader),
    ] {
        let forged = pyjwt_token(python, &pem, &body, variant);
        let error =
            verify(&forged, &public, AUDIENCE, &report(), now()).expect_err("forgery refused");
        assert_eq!(error.reason, reason, "{variant}: {error}");
    }
}

proptest! {
    #[test]
    fn parsing_arbitrary_text_never_panics(text in ".{0,400}") {
        let _ = ParsedToken::parse(&text);
    }

    #[test]
    fn parsing_arbitrary_parts_never_panics(
        header in proptest::collection::vec(any::<u8>(), 0..200),
        body in proptest::collection::vec(any::<u8>(), 0..300),
        signature in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(body),
            URL_SAFE_NO_PAD.encode(signature)
        );
        if let Ok(parsed) = ParsedToken::parse(&token) {
            let _ = parsed.verify_signature(&signer(1).verifying_key());
        }
    }

    #[test]
    fn mutating_a_valid_token_is_never_accepted(position in 0_usize..400, byte in any::<u8>()) {
        let token = signer(1).sign(&claims());
        let mut bytes = token.clone().into_bytes();
        let index = position % bytes.len();
        prop_assume!(bytes[index] != byte);
        bytes[index] = byte;
        if let Ok(mutated) = String::from_utf8(bytes) {
            // Decoding can map two texts to the same bytes only in the last base64 character's
            // unused bits; whatever verifies must then carry exactly the signed claims.
            if let Ok(claims) = verify(&mutated, &signer(1).verifying_key(), AUDIENCE, &report(), now()) {
                prop_assert_eq!(claims, self::claims());
            }
        }
    }
}
