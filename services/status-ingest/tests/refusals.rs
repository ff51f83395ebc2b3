//! `ReportStatus` refusals over real gRPC on loopback, on Postgres and SQLite: every refusal
//! has its code and reason and changes nothing; an unrouted, a foreign and a missing order get
//! one identical answer.
#![allow(clippy::unwrap_used)]

mod common;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, Utc};
use common::{
    AUDIENCE,
    service::{Service, hand_made, report, request, world},
    signer, token_for,
};
use serde_json::json;
use tonic::Code;
use uuid::Uuid;
use waybill_proto::v1::{OrderStatus, ReportStatusRequest};
use waybill_test_kit::{TestBackend, on_both_backends};
use waybill_token::{Report, ReportClaims, SigningKey, TokenSigner};

on_both_backends!(
    every_refusal_has_its_code_and_reason_and_changes_nothing,
    a_nul_anywhere_is_refused_before_any_query_naming_where,
    unrouted_foreign_and_missing_orders_get_one_identical_answer,
);

async fn every_refusal_has_its_code_and_reason_and_changes_nothing(backend: TestBackend) {
    let (world, order, acme) = world(backend).await;
    world.key("acme", &signer(3, "k-old")).await;
    world.revoke("acme", "k-old").await;
    let ingest = Service::start(world.deps()).await;
    let now = world.now();
    let good = report(
        order,
        "acme",
        "r-1",
        OrderStatus::Shipped,
        "1Z999",
        now - Duration::seconds(5),
    );
    let claims = |r: &Report, at: DateTime<Utc>, aud: &str| {
        ReportClaims::new(r, aud, at, 120, Uuid::new_v4().to_string())
    };
    let header = |alg: &str| json!({"alg": alg, "typ": "wb-report+jwt", "kid": "k1"});
    let key1 = SigningKey::from_bytes(&[1; 32]);
    let other = |change: fn(&mut Report)| {
        let mut r = good.clone();
        change(&mut r);
        r
    };

    // (what, request, code, reason counted)
    let cases: Vec<(&str, ReportStatusRequest, Code, &str)> = vec![
        (
            "forged signature",
            request(
                &good,
                TokenSigner::new(SigningKey::from_bytes(&[9; 32]), "k1")
                    .sign(&claims(&good, now, AUDIENCE)),
            ),
            Code::Unauthenticated,
            "bad_signature",
        ),
        (
            "unknown key id",
            request(
                &good,
                signer(1, "k-unknown").sign(&claims(&good, now, AUDIENCE)),
            ),
            Code::Unauthenticated,
            "unknown_key",
        ),
        (
            "revoked key",
            request(
                &good,
                signer(3, "k-old").sign(&claims(&good, now, AUDIENCE)),
            ),
            Code::Unauthenticated,
            "revoked_key",
        ),
        (
            "another partner's key",
            request(&good, signer(2, "g1").sign(&claims(&good, now, AUDIENCE))),
            Code::Unauthenticated,
            "unknown_key",
        ),
        (
            "another partner's token",
            request(
                &good,
                signer(2, "g1").sign(&claims(
                    &other(|r| r.partner_id = "globex".into()),
                    now,
                    AUDIENCE,
                )),
            ),
            Code::Unauthenticated,
            "claim_mismatch",
        ),
        (
            "expired",
            request(
                &good,
                acme.sign(&claims(&good, now - Duration::minutes(4), AUDIENCE)),
            ),
            Code::Unauthenticated,
            "expired",
        ),
        (
            "from the future",
            request(
                &good,
                acme.sign(&claims(&good, now + Duration::seconds(90), AUDIENCE)),
            ),
            Code::Unauthenticated,
            "issued_in_future",
        ),
        (
            "wrong audience",
            request(&good, acme.sign(&claims(&good, now, "waybill-sandbox"))),
            Code::Unauthenticated,
            "wrong_audience",
        ),
        (
            "alg none",
            request(
                &good,
                format!(
                    "{}.{}.",
                    URL_SAFE_NO_PAD.encode(header("none").to_string()),
                    URL_SAFE_NO_PAD
                        .encode(serde_json::to_vec(&claims(&good, now, AUDIENCE)).unwrap())
                ),
            ),
            Code::Unauthenticated,
            "wrong_algorithm",
        ),
        (
            "alg HS256",
            request(
                &good,
                hand_made(&key1, header("HS256"), &claims(&good, now, AUDIENCE)),
            ),
            Code::Unauthenticated,
            "wrong_algorithm",
        ),
        (
            "key in the header",
            request(
                &good,
                hand_made(
                    &key1,
                    json!({"alg": "EdDSA", "typ": "wb-report+jwt", "kid": "k1", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(key1.verifying_key().to_bytes())}}),
                    &claims(&good, now, AUDIENCE),
                ),
            ),
            Code::Unauthenticated,
            "key_in_header",
        ),
        (
            "token for another order",
            request(
                &good,
                acme.sign(&claims(
                    &other(|r| r.order_id = Uuid::now_v7().to_string()),
                    now,
                    AUDIENCE,
                )),
            ),
            Code::Unauthenticated,
            "claim_mismatch",
        ),
        (
            "token for another report id",
            request(
                &good,
                acme.sign(&claims(
                    &other(|r| r.report_id = "r-2".into()),
                    now,
                    AUDIENCE,
                )),
            ),
            Code::Unauthenticated,
            "claim_mismatch",
        ),
        (
            "token for another status",
            request(
                &good,
                acme.sign(&claims(
                    &other(|r| r.status = "DELIVERED".into()),
                    now,
                    AUDIENCE,
                )),
            ),
            Code::Unauthenticated,
            "claim_mismatch",
        ),
        (
            "token for another tracking id",
            request(
                &good,
                acme.sign(&claims(
                    &other(|r| r.tracking_id = "1Z000".into()),
                    now,
                    AUDIENCE,
                )),
            ),
            Code::Unauthenticated,
            "claim_mismatch",
        ),
        // What the partner said beyond the ids and the status is signed too: a detail, detail
        // code or action_required changed after signing is refused like a changed status.
        (
            "detail changed after signing",
            ReportStatusRequest {
                detail: "delivered to a neighbour".into(),
                ..request(&good, acme.sign(&claims(&good, now, AUDIENCE)))
            },
            Code::Unauthenticated,
            "claim_mismatch",
        ),
        (
            "detail removed after signing",
            ReportStatusRequest {
                detail: String::new(),
                ..request(&good, acme.sign(&claims(&good, now, AUDIENCE)))
            },
            Code::Unauthenticated,
            "claim_mismatch",
        ),
        (
            "detail_code changed after signing",
            ReportStatusRequest {
                detail_code: "ADDRESS_NOT_FOUND".into(),
                ..request(&good, acme.sign(&claims(&good, now, AUDIENCE)))
            },
            Code::Unauthenticated,
            "claim_mismatch",
        ),
        (
            "action_required changed after signing",
            ReportStatusRequest {
                action_required: true,
                ..request(&good, acme.sign(&claims(&good, now, AUDIENCE)))
            },
            Code::Unauthenticated,
            "claim_mismatch",
        ),
        (
            "token for another detail",
            request(
                &good,
                acme.sign(&claims(
                    &other(|r| r.detail = "left at the door".into()),
                    now,
                    AUDIENCE,
                )),
            ),
            Code::Unauthenticated,
            "claim_mismatch",
        ),
        (
            "garbage token",
            request(&good, "not-a-token".into()),
            Code::Unauthenticated,
            "malformed",
        ),
        (
            "no token",
            request(&good, String::new()),
            Code::Unauthenticated,
            "malformed",
        ),
        (
            "malformed field",
            ReportStatusRequest {
                correlation_id: "order-1".into(),
                ..request(&good, acme.sign(&claims(&good, now, AUDIENCE)))
            },
            Code::InvalidArgument,
            "invalid_argument",
        ),
    ];
    let before = world.state_of(order).await;
    for (what, request, code, reason) in cases {
        let token = request.token.clone();
        let counted = ingest
            .stats()
            .await
            .rejected
            .get(reason)
            .copied()
            .unwrap_or_default();
        let status = ingest
            .client
            .clone()
            .report_status(request)
            .await
            .expect_err(what);
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        assert!(status.message().len() <= 1024, "{what}: bounded message");
        if token.len() > 20 {
            assert!(
                !status.message().contains(&token),
                "{what}: the token is never echoed"
            );
        }
        assert_eq!(
            ingest
                .stats()
                .await
                .rejected
                .get(reason)
                .copied()
                .unwrap_or_default(),
            counted + 1,
            "{what}: counted as {reason}"
        );
        assert_eq!(
            world.state_of(order).await,
            before,
            "{what}: nothing changed"
        );
    }
    // The field is named.
    let status = ingest
        .client
        .clone()
        .report_status(ReportStatusRequest {
            tracking_id: "x".repeat(500),
            ..request(&good, acme.sign(&claims(&good, now, AUDIENCE)))
        })
        .await
        .unwrap_err();
    assert!(
        status.message().starts_with("tracking_id:"),
        "{}",
        status.message()
    );
    // And after all that, the honest report is accepted.
    ingest
        .client
        .clone()
        .report_status(request(&good, acme.sign(&claims(&good, now, AUDIENCE))))
        .await
        .unwrap();
    ingest.stop().await;
}

/// Postgres cannot hold a NUL in `text` (SQLite can): a NUL that reached a query was answered
/// `INTERNAL` on Postgres — in the token's `kid` or `iss` without any valid key, in the `jti`
/// of a validly signed token. Every text that reaches a query is checked first, so each gets a
/// specific, bounded refusal on both backends, counted, changing nothing.
async fn a_nul_anywhere_is_refused_before_any_query_naming_where(backend: TestBackend) {
    let (world, order, acme) = world(backend).await;
    let ingest = Service::start(world.deps()).await;
    let now = world.now();
    let good = report(order, "acme", "r-1", OrderStatus::Shipped, "1Z999", now);
    let claims = |r: &Report| ReportClaims::new(r, AUDIENCE, now, 120, Uuid::new_v4().to_string());
    let signed = |change: fn(&mut ReportStatusRequest)| {
        let mut request = request(&good, acme.sign(&claims(&good)));
        change(&mut request);
        request
    };
    let key1 = SigningKey::from_bytes(&[1; 32]);
    let header = json!({"alg": "EdDSA", "typ": "wb-report+jwt", "kid": "k1"});
    let mut with_iss = claims(&good);
    with_iss.iss = "acme\0".into();
    let mut with_jti = claims(&good);
    with_jti.jti = "\0".into();

    // (what, request, code, reason counted, the message starts with)
    let cases: Vec<(&str, ReportStatusRequest, Code, &str, &str)> = vec![
        (
            "kid with NUL, signed by nobody",
            request(&good, signer(9, "k1\0").sign(&claims(&good))),
            Code::Unauthenticated,
            "malformed",
            "report token refused: malformed: header kid (the enrolled key id) must not contain control characters",
        ),
        (
            "iss with NUL, signed by nobody",
            request(&good, signer(9, "k1").sign(&with_iss)),
            Code::Unauthenticated,
            "malformed",
            "report token refused: malformed: claim iss (your partner id) must not contain control characters",
        ),
        (
            "jti with NUL, validly signed",
            request(&good, hand_made(&key1, header, &with_jti)),
            Code::Unauthenticated,
            "malformed",
            "report token refused: malformed: claim jti (a unique token id) must not contain control characters",
        ),
        (
            "NUL in correlation_id",
            signed(|r| r.correlation_id.push('\0')),
            Code::InvalidArgument,
            "invalid_argument",
            "correlation_id: ",
        ),
        (
            "NUL in partner_id",
            signed(|r| r.partner_id.push('\0')),
            Code::InvalidArgument,
            "invalid_argument",
            "partner_id: ",
        ),
        (
            "NUL in report_id",
            signed(|r| r.report_id.push('\0')),
            Code::InvalidArgument,
            "invalid_argument",
            "report_id: must not contain control characters",
        ),
        (
            "NUL in tracking_id",
            signed(|r| r.tracking_id.push('\0')),
            Code::InvalidArgument,
            "invalid_argument",
            "tracking_id: must not contain control characters",
        ),
        (
            "NUL in detail",
            signed(|r| r.detail.push('\0')),
            Code::InvalidArgument,
            "invalid_argument",
            "detail: must not contain control characters",
        ),
        (
            "NUL in detail_code",
            signed(|r| r.detail_code.push('\0')),
            Code::InvalidArgument,
            "invalid_argument",
            "detail_code: ",
        ),
        (
            "detail changed after signing",
            signed(|r| r.detail = "delivered to a neighbour".into()),
            Code::Unauthenticated,
            "claim_mismatch",
            "report token refused: claim_mismatch: claim detail is \"scanned at the depot\" but the request's detail is \"delivered to a neighbour\"",
        ),
    ];
    let before = world.state_of(order).await;
    for (what, request, code, reason, message) in cases {
        let counted = ingest.stats().await.rejected.get(reason).copied();
        let status = ingest
            .client
            .clone()
            .report_status(request)
            .await
            .expect_err(what);
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        assert!(
            status.message().starts_with(message),
            "{what}: {}",
            status.message()
        );
        assert!(status.message().len() <= 1024, "{what}: bounded message");
        assert_eq!(
            ingest.stats().await.rejected.get(reason).copied(),
            Some(counted.unwrap_or_default() + 1),
            "{what}: counted as {reason}"
        );
        assert_eq!(
            world.state_of(order).await,
            before,
            "{what}: nothing changed"
        );
    }
    ingest.stop().await;
}

async fn unrouted_foreign_and_missing_orders_get_one_identical_answer(backend: TestBackend) {
    let (world, _, acme) = world(backend).await;
    let never_routed = world.order().await;
    let foreign = world.order().await;
    world.route(foreign, "globex").await;
    let ingest = Service::start(world.deps()).await;
    let mut messages = Vec::new();
    for order in [never_routed, foreign, Uuid::now_v7()] {
        let r = report(order, "acme", "r-1", OrderStatus::Shipped, "", world.now());
        let status = ingest
            .client
            .clone()
            .report_status(request(&r, token_for(&acme, &r, world.now())))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        messages.push(status.message().to_owned());
    }
    assert!(messages.iter().all(|m| *m == messages[0]), "{messages:?}");
    assert!(
        !messages[0].contains("globex") && !messages[0].contains("exist"),
        "{}",
        messages[0]
    );
    assert_eq!(ingest.stats().await.rejected.get("not_routed"), Some(&3));
    assert_eq!(world.token_ids().await, 0);
    assert_eq!(world.history(foreign).await.len(), 2);
    ingest.stop().await;
}
