//! `DispatchAdmin` over real TLS on loopback with credentials: an operator's key works, a
//! storefront's is PERMISSION_DENIED, none is UNAUTHENTICATED, health stays open, and the admin
//! API refuses requests larger than its deliberate limit.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::Harness;
use tonic::{Code, Request, transport::Channel};
use waybill_dispatcher::DispatcherDeps;
use waybill_proto::v1::{self, dispatch_admin_client::DispatchAdminClient};
use waybill_service_kit::security::{
    Credentials, ReloadableTls, ServerSecurity, auth::hash_api_key,
};
use waybill_test_kit::{TestBackend, tls::TestPki};

const OPERATOR_KEY: &str = "op_admin_test_5d2a";
const STOREFRONT_KEY: &str = "sf_admin_test_c81e";

fn authed<T>(message: T, key: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_admin_is_for_operators_only() {
    let h = Harness::new(TestBackend::Sqlite).await;
    let pki = TestPki::new();
    let credentials = Credentials::parse(&format!(
        r#"{{"callers":[
            {{"name":"alice","role":"operator","api_key_sha256":"{}"}},
            {{"name":"shop-eu","role":"storefront","api_key_sha256":"{}"}}
        ]}}"#,
        hash_api_key(OPERATOR_KEY),
        hash_api_key(STOREFRONT_KEY)
    ))
    .unwrap();
    let mut deps = DispatcherDeps::new(h.db.clone(), h.kafka(), h.settings("secure")).unwrap();
    deps.topic_creator = h.broker.topic_creator();
    deps.limits.security = ServerSecurity {
        tls: Some(ReloadableTls::load(pki.server_files(false)).unwrap()),
        credentials: Some(Arc::new(credentials)),
        rate_limit: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(waybill_dispatcher::serve(listener, deps, shutdown.clone()));

    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(pki.client_config(None))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = DispatchAdminClient::new(channel.clone());

    let partners = admin
        .list_partners(authed(v1::ListPartnersRequest {}, Some(OPERATOR_KEY)))
        .await
        .unwrap()
        .into_inner();
    assert!(partners.partners.is_empty());
    let enrolled = admin
        .enroll_partner(authed(
            v1::EnrollPartnerRequest {
                partner: Some(v1::Partner {
                    id: "acme".into(),
                    ..Default::default()
                }),
            },
            Some(OPERATOR_KEY),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enrolled.id, "acme");

    for (key, code) in [
        (Some(STOREFRONT_KEY), Code::PermissionDenied),
        (None, Code::Unauthenticated),
        (Some("guess"), Code::Unauthenticated),
    ] {
        let status = admin
            .disable_partner(authed(
                v1::DisablePartnerRequest {
                    partner_id: "acme".into(),
                    ..Default::default()
                },
                key,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{key:?}: {}", status.message());
        assert!(!status.message().contains(STOREFRONT_KEY));
    }
    let still = admin
        .list_partners(authed(v1::ListPartnersRequest {}, Some(OPERATOR_KEY)))
        .await
        .unwrap()
        .into_inner();
    assert!(still.partners[0].enabled, "refused calls changed nothing");

    // Health stays open without a credential.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: waybill_dispatcher::SERVICE_NAME.into(),
        })
        .await
        .unwrap();

    // Past the admin API's request limit: refused before decoding, readably.
    let status = admin
        .retry_dispatches(authed(
            v1::RetryDispatchesRequest {
                order_ids: vec!["x".repeat(1024); 200],
                ..Default::default()
            },
            Some(OPERATOR_KEY),
        ))
        .await
        .unwrap_err();
    assert!(
        status.message().contains("message length too large"),
        "{:?} {}",
        status.code(),
        status.message()
    );

    shutdown.cancel();
    task.await.unwrap().unwrap();
}
