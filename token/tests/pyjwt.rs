//! Tokens from PyJWT, an implementation independent of ours: a committed vector and, when
//! python3 with PyJWT is available (pip installs it otherwise), fresh tokens and forgeries.

mod common;

use std::{path::PathBuf, process::Command};

use chrono::DateTime;
use common::{AUDIENCE, claims, now, report};
use waybill_token::{ParsedToken, RejectReason, Report, ReportClaims, SigningKey, keys, verify};

/// The committed vectors: `pyjwt-vector.json` predates the detail claims (it proves that a token
/// without them stays valid for a report without detail, detail code or action required);
/// `pyjwt-vector-detail.json` carries all three, its detail with a line break and characters
/// PyJWT escapes (`\u00e0`, a surrogate pair).
#[test]
fn the_committed_pyjwt_vectors_are_accepted_and_bind_every_field() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    for (file, public_key) in [
        ("pyjwt-vector.json", "vector-public.pem"),
        ("pyjwt-vector-detail.json", "vector-detail-public.pem"),
    ] {
        let vector: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(file)).expect("vector file"))
                .expect("json");
        let key = keys::verifying_key_from_bytes(
            &std::fs::read(dir.join(public_key)).expect("public key"),
        )
        .expect("spki pem");
        let claims = &vector["claims"];
        let text = |name: &str| claims[name].as_str().unwrap_or_default().to_owned();
        let request = Report {
            partner_id: text("iss"),
            order_id: text("sub"),
            report_id: text("report_id"),
            status: text("status"),
            tracking_id: text("tracking_id"),
            detail: text("detail"),
            detail_code: text("detail_code"),
            action_required: claims["action_required"].as_bool().unwrap_or_default(),
            occurred_at: DateTime::parse_from_rfc3339(&text("occurred_at"))
                .expect("rfc3339")
                .to_utc(),
        };
        let at = DateTime::from_timestamp(vector["now"].as_i64().expect("now"), 0).expect("time");
        let audience = vector["audience"].as_str().expect("aud");
        let token = vector["token"].as_str().expect("token");
        let verified =
            verify(token, &key, audience, &request, at).expect("PyJWT's token is accepted");
        assert_eq!(verified.jti, text("jti"), "{file}");
        assert_eq!(
            ParsedToken::parse(token).expect("parses").key_id(),
            vector["key_id"].as_str().expect("kid")
        );
        // Any change of the detail, its code or action_required after signing is refused.
        let altered = [
            Report {
                detail: format!("{} ", request.detail),
                ..request.clone()
            },
            Report {
                detail_code: format!("{}X", request.detail_code),
                ..request.clone()
            },
            Report {
                action_required: !request.action_required,
                ..request.clone()
            },
        ];
        for changed in altered {
            let error = verify(token, &key, audience, &changed, at).expect_err("altered");
            assert_eq!(error.reason, RejectReason::ClaimMismatch, "{file}: {error}");
        }
    }
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
    let python = python_with_pyjwt();
    waybill_test_kit::require!(
        python.is_some(),
        "python3 with PyJWT[crypto] is not available and pip cannot install it"
    );
    let Some(python) = python else { return };
    let key = SigningKey::from_bytes(&[9; 32]);
    let pem = keys::signing_key_to_pem(&key).expect("pem");
    let public = key.verifying_key();
    let body = serde_json::to_value(claims()).expect("json");

    // The report carries a detail with a line break and characters outside ASCII, which PyJWT
    // escapes (`\u00e9`, a surrogate pair for the emoji): the claims still equal the request's
    // fields exactly, and a changed field is refused.
    let token = pyjwt_token(python, &pem, &body, "eddsa");
    let verified =
        verify(&token, &public, AUDIENCE, &report(), now()).expect("PyJWT token accepted");
    assert_eq!(verified.report_id, "r-1");
    assert_eq!(verified.detail, report().detail);
    let altered = [
        Report {
            detail: "delivered to a neighbour".into(),
            ..report()
        },
        Report {
            detail_code: "ADDRESS_NOT_FOUND".into(),
            ..report()
        },
        Report {
            action_required: false,
            ..report()
        },
    ];
    for request in altered {
        let error =
            verify(&token, &public, AUDIENCE, &request, now()).expect_err("altered refused");
        assert_eq!(error.reason, RejectReason::ClaimMismatch, "{error}");
    }

    // The longest report a request may carry, every character escaped by PyJWT, fits.
    let longest = Report {
        report_id: "\u{1f4e6}".repeat(128),
        tracking_id: "\u{1f4e6}".repeat(128),
        detail: "\u{1f4e6}".repeat(1024),
        detail_code: "X".repeat(64),
        ..report()
    };
    let longest_body = serde_json::to_value(ReportClaims::new(
        &longest,
        AUDIENCE,
        now(),
        120,
        "j".repeat(128),
    ))
    .expect("json");
    let token = pyjwt_token(python, &pem, &longest_body, "eddsa");
    verify(&token, &public, AUDIENCE, &longest, now()).expect("the longest report fits");

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
