//! The token checks, each refusal by its reason, at a fixed `now`: form and headers, signature,
//! time and audience, every bound claim, and the identifiers a verifier looks up or stores.
//! (`pyjwt.rs`: tokens from an independent implementation; `properties.rs`: arbitrary input.)

mod common;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use common::{AUDIENCE, claims, hand_made, now, refusal, report, signer};
use serde_json::json;
use waybill_token::{ParsedToken, RejectReason, Report, ReportClaims, verify};

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

/// A change of one request field.
type Change = fn(&mut Report);

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
    let mismatches: [(&str, Change); 14] = [
        ("iss", |r| r.partner_id = "other".to_owned()),
        ("sub", |r| {
            r.order_id = "0193a3f0-0000-7000-8000-000000000002".to_owned()
        }),
        ("report_id", |r| r.report_id = "r-2".to_owned()),
        ("status", |r| r.status = "DELIVERED".to_owned()),
        ("tracking_id", |r| r.tracking_id = "1Z000".to_owned()),
        ("occurred_at", |r| {
            r.occurred_at += chrono::Duration::microseconds(1)
        }),
        // The detail, its code and action_required are the partner's words too: each is bound,
        // exactly (no trimming, no case folding, no Unicode normalisation, no line-break
        // rewriting), and an empty field does not match a signed one.
        ("detail", |r| r.detail = "returned to sender".to_owned()),
        ("detail", |r| r.detail.push(' ')),
        ("detail", |r| r.detail = r.detail.replace("\r\n", "\n")),
        ("detail", |r| {
            r.detail = r.detail.replace('\u{e9}', "e\u{301}")
        }),
        ("detail", |r| r.detail.clear()),
        ("detail_code", |r| r.detail_code = "in_transit".to_owned()),
        ("detail_code", |r| r.detail_code.clear()),
        ("action_required", |r| r.action_required = false),
    ];
    for (claim, change) in mismatches {
        let mut request = report();
        change(&mut request);
        let error = verify(
            &token,
            &signer(1).verifying_key(),
            AUDIENCE,
            &request,
            now(),
        )
        .expect_err(claim);
        assert_eq!(error.reason, RejectReason::ClaimMismatch, "{claim}");
        assert!(
            error.detail.starts_with(&format!("claim {claim} is ")),
            "{claim}: {error}"
        );
        assert!(error.detail.len() < 400, "bounded: {error}");
    }
}

#[test]
fn absent_or_null_optional_claims_bind_only_an_empty_field() {
    // A token signed without the optional claims (as before they existed, or by a partner that
    // leaves empty ones out) verifies for a request without tracking id, detail, detail code or
    // action required, and for nothing else.
    let bare = Report {
        tracking_id: String::new(),
        detail: String::new(),
        detail_code: String::new(),
        action_required: false,
        ..report()
    };
    let mut body =
        serde_json::to_value(ReportClaims::new(&bare, AUDIENCE, now(), 120, "j")).expect("json");
    let object = body.as_object_mut().expect("object");
    for name in ["tracking_id", "detail", "detail_code", "action_required"] {
        object.remove(name);
    }
    let header = json!({"alg": "EdDSA", "typ": "wb-report+jwt", "kid": "acme-2026"});
    let absent = hand_made(header.clone(), body.clone());
    for name in ["tracking_id", "detail", "detail_code", "action_required"] {
        body[name] = serde_json::Value::Null;
    }
    let null = hand_made(header, body);
    for token in [absent, null] {
        verify(&token, &signer(1).verifying_key(), AUDIENCE, &bare, now())
            .expect("absent or null claims are the empty field");
        let changes: [fn(&mut Report); 4] = [
            |r| r.tracking_id = "1Z".into(),
            |r| r.detail = "d".into(),
            |r| r.detail_code = "C".into(),
            |r| r.action_required = true,
        ];
        for change in changes {
            let mut request = bare.clone();
            change(&mut request);
            assert_eq!(
                refusal(&token, 1, now(), &request),
                RejectReason::ClaimMismatch
            );
        }
    }
}

#[test]
fn nul_and_other_controls_in_kid_iss_or_jti_are_malformed_before_any_key_is_used() {
    // kid and iss find the key before the signature is checked and jti is stored: none may
    // reach a query with a NUL (Postgres refuses it), so the parser refuses them first, with a
    // message that names the header or claim and stays short.
    let body = serde_json::to_value(claims()).expect("json");
    let header = |kid: &str| json!({"alg": "EdDSA", "typ": "wb-report+jwt", "kid": kid});
    let mut cases = Vec::new();
    for bad in ["k\0", "\0", "k\n1", "k\u{1b}[31m", "k\u{7f}"] {
        cases.push((hand_made(header(bad), body.clone()), "header kid"));
        for claim in ["iss", "jti"] {
            let mut changed = body.clone();
            changed[claim] = json!(bad);
            cases.push((hand_made(header("k"), changed), claim));
        }
    }
    for (claim, value) in [
        ("iss", "a".repeat(65)),
        ("iss", String::new()),
        ("jti", "j".repeat(129)),
    ] {
        let mut changed = body.clone();
        changed[claim] = json!(value);
        cases.push((hand_made(header("k"), changed), claim));
    }
    cases.push((
        hand_made(header(&"k".repeat(65)), body.clone()),
        "header kid",
    ));
    for (token, named) in cases {
        let error = ParsedToken::parse(&token).expect_err(named);
        assert_eq!(error.reason, RejectReason::Malformed, "{named}: {error}");
        assert!(error.detail.contains(named), "{named}: {error}");
        assert!(error.detail.len() < 200, "{named}: {error}");
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
