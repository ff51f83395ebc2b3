//! `waybill keys generate`, `waybill token sign` and `waybill token verify [--explain]` as a
//! person runs them: files written (the private one owner-only, never overwritten), the
//! enrolment command printed, a signed token accepted, each refusal explained with exit status 1.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn waybill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_waybill"))
        .args(args)
        .env_remove("WAYBILL_TOKEN_AUDIENCE")
        .env_remove("WAYBILL_DATABASE_URL")
        .env_remove("WAYBILL_DISPATCHER")
        .env_remove("WAYBILL_TLS_CA")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn generate_sign_verify_and_explain() {
    let dir = std::env::temp_dir().join(format!("waybill-token-cli-{}", uuid::Uuid::new_v4()));
    let dir_arg = dir.to_str().unwrap();
    let generated = waybill(&[
        "keys",
        "generate",
        "--partner",
        "acme",
        "--key-id",
        "acme-1",
        "--out-dir",
        dir_arg,
    ]);
    assert!(generated.status.success(), "{}", text(&generated));
    let call = String::from_utf8_lossy(&generated.stdout);
    assert_eq!(
        call.trim_end(),
        format!(
            "waybill admin keys add --partner acme --key-id acme-1 --public-key {}",
            dir.join("acme-1.pub.pem").display()
        ),
        "the enrolment command, on the default dispatcher address"
    );
    // Against a dispatcher with TLS elsewhere: the command names its address and CA (the
    // operator's credentials come from the environment, as `waybill admin` reads them).
    let tls = waybill(&[
        "keys",
        "generate",
        "--partner",
        "acme",
        "--key-id",
        "acme-tls",
        "--out-dir",
        dir_arg,
        "--dispatcher",
        "dispatcher:50052",
        "--dispatcher-ca",
        "pki/ca.pem",
    ]);
    assert!(tls.status.success(), "{}", text(&tls));
    let call = String::from_utf8_lossy(&tls.stdout);
    assert!(
        call.starts_with("waybill admin keys add --partner acme --key-id acme-tls ")
            && call
                .trim_end()
                .ends_with("--dispatcher dispatcher:50052 --tls-ca pki/ca.pem"),
        "{call}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("acme-1.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the private key is owner-only");
    }
    let again = waybill(&[
        "keys",
        "generate",
        "--partner",
        "acme",
        "--key-id",
        "acme-1",
        "--out-dir",
        dir_arg,
    ]);
    assert!(
        !again.status.success(),
        "an existing key is never overwritten"
    );

    let key = dir.join("acme-1.pem");
    let public = dir.join("acme-1.pub.pem");
    let order = "0193a3f0-0000-7000-8000-000000000001";
    let signed = waybill(&[
        "token",
        "sign",
        "--key",
        key.to_str().unwrap(),
        "--key-id",
        "acme-1",
        "--partner",
        "acme",
        "--order",
        order,
        "--report-id",
        "r-1",
        "--status",
        "shipped",
        "--tracking-id",
        "1Z9",
        "--occurred-at",
        "2026-11-22T10:00:00Z",
    ]);
    assert!(signed.status.success(), "{}", text(&signed));
    let token = String::from_utf8_lossy(&signed.stdout).trim().to_owned();
    assert_eq!(token.split('.').count(), 3);

    let public = public.to_str().unwrap();
    let valid = waybill(&[
        "token", "verify", "--key", public, "--order", order, "--status", "SHIPPED", &token,
    ]);
    assert!(valid.status.success(), "{}", text(&valid));
    assert_eq!(String::from_utf8_lossy(&valid.stdout).trim(), "valid");

    let wrong_env = waybill(&[
        "token",
        "verify",
        "--explain",
        "--key",
        public,
        "--audience",
        "waybill-production",
        &token,
    ]);
    assert_eq!(wrong_env.status.code(), Some(1));
    let explained = text(&wrong_env);
    assert!(
        explained.contains("ok   signature") && explained.contains("FAIL audience"),
        "{explained}"
    );
    assert!(
        explained.contains("wrong_audience") && explained.contains("what to do"),
        "{explained}"
    );

    let mismatch = waybill(&[
        "token",
        "verify",
        "--explain",
        "--key",
        public,
        "--tracking-id",
        "OTHER",
        &token,
    ]);
    assert_eq!(mismatch.status.code(), Some(1));
    assert!(
        text(&mismatch).contains("claim tracking_id is \"1Z9\""),
        "{}",
        text(&mismatch)
    );

    // Every field the request carries is signed: detail, detail code and action required too.
    let with_detail = waybill(&[
        "token",
        "sign",
        "--key",
        key.to_str().unwrap(),
        "--key-id",
        "acme-1",
        "--partner",
        "acme",
        "--order",
        order,
        "--report-id",
        "r-2",
        "--status",
        "EXCEPTION",
        "--detail",
        "nobody at home",
        "--detail-code",
        "DELIVERY_ATTEMPTED",
        "--action-required",
        "--request-json",
    ]);
    assert!(with_detail.status.success(), "{}", text(&with_detail));
    let request: serde_json::Value = serde_json::from_slice(&with_detail.stdout).unwrap();
    assert_eq!(request["detail"], "nobody at home");
    assert_eq!(request["detail_code"], "DELIVERY_ATTEMPTED");
    assert_eq!(request["action_required"], true);
    let detailed = request["token"].as_str().unwrap();
    let as_sent = waybill(&[
        "token",
        "verify",
        "--key",
        public,
        "--detail",
        "nobody at home",
        "--detail-code",
        "DELIVERY_ATTEMPTED",
        "--action-required",
        detailed,
    ]);
    assert!(as_sent.status.success(), "{}", text(&as_sent));
    let explained = waybill(&["token", "verify", "--explain", "--key", public, detailed]);
    assert!(
        text(&explained).contains(
            "detail \"nobody at home\", detail_code \"DELIVERY_ATTEMPTED\", action_required true"
        ),
        "{}",
        text(&explained)
    );
    for (flag, value, refusal) in [
        (
            "--detail",
            "--detail=delivered",
            "claim detail is \"nobody at home\" but the request's detail is \"delivered\"",
        ),
        (
            "--detail-code",
            "--detail-code=",
            "claim detail_code is \"DELIVERY_ATTEMPTED\" but the request's detail_code is \"\"",
        ),
        (
            "--action-required",
            "--action-required=false",
            "claim action_required is true but the request's action_required is false",
        ),
    ] {
        let altered = waybill(&[
            "token",
            "verify",
            "--explain",
            "--key",
            public,
            value,
            detailed,
        ]);
        assert_eq!(altered.status.code(), Some(1), "{flag}");
        let said = text(&altered);
        assert!(
            said.contains("FAIL claims equal the request") && said.contains(refusal),
            "{flag}: {said}"
        );
    }

    let other_key = waybill(&[
        "keys",
        "generate",
        "--partner",
        "acme",
        "--key-id",
        "acme-2",
        "--out-dir",
        dir_arg,
    ]);
    assert!(other_key.status.success());
    let forged = waybill(&[
        "token",
        "verify",
        "--explain",
        "--key",
        dir.join("acme-2.pub.pem").to_str().unwrap(),
        &token,
    ]);
    assert_eq!(forged.status.code(), Some(1));
    assert!(
        text(&forged).contains("FAIL signature"),
        "{}",
        text(&forged)
    );

    let garbage = waybill(&["token", "verify", "--explain", "not.a.token"]);
    assert_eq!(garbage.status.code(), Some(1));
    assert!(text(&garbage).contains("FAIL form"), "{}", text(&garbage));
    let _ = std::fs::remove_dir_all(dir);
}
