//! A partner refuses an order: its signed REJECTED_BY_PARTNER report goes through StatusIngest,
//! the relay is woken and sends the order to the next matching partner that has not refused it,
//! and when every matching partner has refused it the order is UNROUTABLE for operators.
//! Real Orders, dispatcher (real Kafka-protocol broker), StatusIngest, gRPC on loopback, Postgres.

use tokio_util::sync::CancellationToken;
use waybill_integration_tests::TestStack;
use waybill_proto::{
    time::to_timestamp,
    v1::{self as pb, DispatchState, OrderStatus, status_ingest_client::StatusIngestClient},
};
use waybill_service_kit::grpc::ServerLimits;
use waybill_status_ingest::IngestDeps;
use waybill_test_kit::fixtures::{RouteFixture as _, sample_order, sample_partner, sample_route};
use waybill_token::{Report, ReportClaims, SigningKey, TokenSigner};

const AUDIENCE: &str = "waybill-test";

async fn wait_for(
    stack: &TestStack,
    order_id: &str,
    state: DispatchState,
    partner: &str,
) -> pb::Dispatch {
    // The relay polls every 30 s here: reaching the state within 10 s proves it was woken.
    let what = format!("{state:?} at {partner:?}");
    stack
        .dispatch_when(order_id, &what, |d| {
            d.state() == state && d.partner_id == partner
        })
        .await
}

async fn reject(
    ingest: &mut StatusIngestClient<tonic::transport::Channel>,
    signer: &TokenSigner,
    partner: &str,
    order_id: &str,
) {
    let now = chrono::Utc::now();
    let now = waybill_service_kit::clock::truncate_to_micros(now);
    let report = Report {
        partner_id: partner.to_owned(),
        order_id: order_id.to_owned(),
        report_id: format!("{partner}-reject-1"),
        status: OrderStatus::RejectedByPartner.short_name().to_owned(),
        tracking_id: String::new(),
        detail: "outside our delivery area".into(),
        detail_code: "OUT_OF_AREA".into(),
        action_required: false,
        occurred_at: now,
    };
    let token = signer.sign(&ReportClaims::new(
        &report,
        AUDIENCE,
        now,
        120,
        uuid::Uuid::new_v4().to_string(),
    ));
    let response = ingest
        .report_status(pb::ReportStatusRequest {
            correlation_id: report.order_id,
            partner_id: report.partner_id,
            report_id: report.report_id,
            status: OrderStatus::RejectedByPartner.into(),
            detail: report.detail,
            detail_code: report.detail_code,
            occurred_at: Some(to_timestamp(now)),
            token,
            ..Default::default()
        })
        .await
        .expect("the rejection is accepted")
        .into_inner();
    assert!(!response.duplicate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_order_goes_to_the_next_partner_then_to_operators() {
    let stack = TestStack::builder().start().await;
    // Acme first (priority 10), Globex next (20).
    stack.enroll_partner("acme", "US").await;
    stack.enroll(sample_partner("globex")).await;
    stack
        .set_route(sample_route("globex", "US").with_priority(20))
        .await;
    let signers = [
        (
            "acme",
            TokenSigner::new(SigningKey::from_bytes(&[1; 32]), "acme-1"),
        ),
        (
            "globex",
            TokenSigner::new(SigningKey::from_bytes(&[2; 32]), "globex-1"),
        ),
    ];
    for (partner, signer) in &signers {
        stack
            .add_partner_key(partner, signer.key_id(), &signer.verifying_key().to_bytes())
            .await;
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let ingest_addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(waybill_status_ingest::serve(
        listener,
        IngestDeps::new(&stack.db, AUDIENCE),
        ServerLimits::default(),
        shutdown.clone(),
    ));
    let mut ingest = StatusIngestClient::connect(format!("http://{ingest_addr}"))
        .await
        .expect("connect");

    let mut orders = stack.orders_client().await;
    let order = orders
        .place_order(sample_order("rejected-1", "US"))
        .await
        .expect("place")
        .into_inner()
        .order
        .expect("order");
    wait_for(&stack, &order.id, DispatchState::Sent, "acme").await;

    reject(&mut ingest, &signers[0].1, "acme", &order.id).await;
    wait_for(&stack, &order.id, DispatchState::Sent, "globex").await;
    let fetched = orders
        .get_order(pb::GetOrderRequest {
            order_id: order.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    let journey: Vec<_> = fetched
        .status_history
        .iter()
        .map(|e| (e.status(), e.partner_id.clone()))
        .collect();
    assert_eq!(
        journey,
        vec![
            (OrderStatus::Placed, String::new()),
            (OrderStatus::SentToPartner, "acme".to_owned()),
            (OrderStatus::RejectedByPartner, "acme".to_owned()),
            (OrderStatus::SentToPartner, "globex".to_owned()),
        ]
    );
    assert_eq!(
        (fetched.status(), fetched.partner_id.as_str()),
        (OrderStatus::SentToPartner, "globex")
    );

    // The partner that refused cannot report anything new on the order.
    let now = waybill_service_kit::clock::truncate_to_micros(chrono::Utc::now());
    let late = Report {
        partner_id: "acme".into(),
        order_id: order.id.clone(),
        report_id: "acme-shipped-1".into(),
        status: OrderStatus::Shipped.short_name().into(),
        tracking_id: String::new(),
        detail: String::new(),
        detail_code: String::new(),
        action_required: false,
        occurred_at: now,
    };
    let token = signers[0]
        .1
        .sign(&ReportClaims::new(&late, AUDIENCE, now, 120, "late-1"));
    let refused = ingest
        .report_status(pb::ReportStatusRequest {
            correlation_id: late.order_id.clone(),
            partner_id: "acme".into(),
            report_id: late.report_id.clone(),
            status: OrderStatus::Shipped.into(),
            occurred_at: Some(to_timestamp(now)),
            token,
            ..Default::default()
        })
        .await
        .expect_err("acme refused the order");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    reject(&mut ingest, &signers[1].1, "globex", &order.id).await;
    let dispatch = wait_for(&stack, &order.id, DispatchState::Unroutable, "").await;
    assert!(
        dispatch.last_error.contains("acme") && dispatch.last_error.contains("globex"),
        "{}",
        dispatch.last_error
    );

    shutdown.cancel();
    server.await.expect("join").expect("serve");
}
