//! `ReportStatuses` over real gRPC on loopback, on Postgres and SQLite: each report of a call
//! is answered as `ReportStatus` would answer it, in the call's order, and one report's refusal
//! changes nothing for the others; a call without reports or with too many is refused whole
//! and records nothing; the caller's rate counts every report of a batch.
#![allow(clippy::unwrap_used)]

mod common;

use std::num::NonZeroU32;

use chrono::Duration;
use common::{
    World,
    service::{Service, report, request, world},
    signer, token_for,
};
use tonic::{Code, Status};
use uuid::Uuid;
use waybill_proto::v1::{
    BatchedReport, OrderStatus, ReportResult, ReportStatusRequest, ReportStatusesRequest,
};
use waybill_service_kit::{
    grpc::ServerLimits,
    security::{ServerSecurity, rate_limit::RateLimit},
};
use waybill_status_ingest::grpc::MAX_BATCH_REPORTS;
use waybill_test_kit::{TestBackend, on_both_backends};
use waybill_token::TokenSigner;

on_both_backends!(
    each_report_of_a_batch_is_answered_alone_in_order,
    a_batch_refused_whole_records_nothing,
    a_batch_draws_on_the_callers_rate_report_by_report,
);

/// One `ReportStatuses` call of `requests`: its results, or the call's refusal.
async fn send(
    ingest: &Service,
    requests: Vec<ReportStatusRequest>,
) -> Result<Vec<ReportResult>, Status> {
    let reports = requests
        .into_iter()
        .map(|report| BatchedReport {
            report: Some(report),
            ..BatchedReport::default()
        })
        .collect();
    let call = ReportStatusesRequest { reports };
    let response = ingest.client.clone().report_statuses(call).await?;
    Ok(response.into_inner().results)
}

/// `count` signed reports `r-0`, `r-1`, … of RECEIVED_BY_PARTNER on `order` by acme.
fn received_reports(
    world: &World,
    order: Uuid,
    acme: &TokenSigner,
    count: usize,
) -> Vec<ReportStatusRequest> {
    let (at, now) = (world.now() - Duration::seconds(5), world.now());
    (0..count)
        .map(|n| {
            let id = format!("r-{n}");
            let r = report(order, "acme", &id, OrderStatus::ReceivedByPartner, "T1", at);
            request(&r, token_for(acme, &r, now))
        })
        .collect()
}

async fn each_report_of_a_batch_is_answered_alone_in_order(backend: TestBackend) {
    let (world, order, acme) = world(backend).await;
    let second = world.order().await;
    world.route(second, "acme").await;
    let foreign = world.order().await;
    world.route(foreign, "globex").await;
    let foreign_before = world.history(foreign).await;
    let ingest = Service::start(world.deps()).await;
    let at = world.now() - Duration::seconds(5);
    let now = world.now();

    let received = report(
        order,
        "acme",
        "r-1",
        OrderStatus::ReceivedByPartner,
        "T1",
        at,
    );
    let also = report(
        second,
        "acme",
        "r-2",
        OrderStatus::ReceivedByPartner,
        "T2",
        at,
    );
    let not_ours = report(
        foreign,
        "acme",
        "r-3",
        OrderStatus::ReceivedByPartner,
        "T3",
        at,
    );
    let forged = report(second, "acme", "r-4", OrderStatus::Shipped, "T2", at);
    let requests = vec![
        request(&received, token_for(&acme, &received, now)),
        request(&not_ours, token_for(&acme, &not_ours, now)),
        request(&forged, token_for(&signer(9, "k1"), &forged, now)),
        request(&also, token_for(&acme, &also, now)),
    ];
    let results = send(&ingest, requests).await.unwrap();
    let codes: Vec<Code> = results.iter().map(|r| Code::from_i32(r.code)).collect();
    assert_eq!(
        codes,
        [
            Code::Ok,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::Ok
        ],
        "{results:?}"
    );
    assert!(results[2].message.contains("signature"), "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| !r.duplicate && r.retry_after_ms == 0)
    );

    // Both accepted reports are in their orders' histories; the forged one on `second` and the
    // one on another partner's order changed nothing.
    for (id, tracking) in [(order, "T1"), (second, "T2")] {
        let row = world.order_row(id).await;
        assert_eq!(row.status, "RECEIVED_BY_PARTNER");
        assert_eq!(row.tracking_id.as_deref(), Some(tracking));
        let history = world.history(id).await;
        assert_eq!(history.last().unwrap().status, "RECEIVED_BY_PARTNER");
        assert!(history.iter().all(|e| e.status != "SHIPPED"), "{history:?}");
    }
    assert_eq!(world.history(foreign).await, foreign_before);
    let stats = ingest.stats().await;
    assert_eq!(stats.accepted, 2);
    assert_eq!(stats.rejected["bad_signature"], 1);
    assert_eq!(stats.rejected["not_routed"], 1);

    // The same reports again, fresh tokens: duplicates, as ReportStatus answers them.
    let again = vec![
        request(&also, token_for(&acme, &also, now)),
        request(&received, token_for(&acme, &received, now)),
    ];
    let results = send(&ingest, again).await.unwrap();
    assert!(
        results
            .iter()
            .all(|r| r.code == Code::Ok as i32 && r.duplicate),
        "{results:?}"
    );
    assert_eq!(ingest.stats().await.duplicates, 2);
    ingest.stop().await;
}

async fn a_batch_refused_whole_records_nothing(backend: TestBackend) {
    let (world, order, acme) = world(backend).await;
    let before = (world.order_row(order).await, world.history(order).await);
    let ingest = Service::start(world.deps()).await;

    let empty = send(&ingest, Vec::new()).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert!(empty.message().starts_with("reports: "), "{empty:?}");

    // One report more than a call may carry, the first of them valid: none is looked at.
    let too_many = received_reports(&world, order, &acme, MAX_BATCH_REPORTS + 1);
    let refused = send(&ingest, too_many).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains(&format!("at most {MAX_BATCH_REPORTS}")),
        "{refused:?}"
    );
    assert_eq!(world.token_ids().await, 0);
    assert_eq!(
        (world.order_row(order).await, world.history(order).await),
        before
    );
    let stats = ingest.stats().await;
    assert_eq!((stats.accepted, stats.duplicates), (0, 0));
    ingest.stop().await;
}

async fn a_batch_draws_on_the_callers_rate_report_by_report(backend: TestBackend) {
    let (world, order, acme) = world(backend).await;
    let limits = ServerLimits {
        security: ServerSecurity {
            rate_limit: Some(RateLimit {
                per_second: NonZeroU32::MIN,
                burst: NonZeroU32::new(3).unwrap(),
            }),
            ..ServerSecurity::default()
        },
        ..ServerLimits::default()
    };
    let ingest = Service::start_with(world.deps(), limits).await;
    let reports = received_reports(&world, order, &acme, 4);

    // Four reports in one call: more than the burst of three, so the call is refused whole.
    let refused = send(&ingest, reports.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("rate limit"), "{refused:?}");
    assert_eq!(world.token_ids().await, 0);

    // Three fit the burst (the refused call spent one at the door, the time since refilled
    // at most one): two reports go through.
    let results = send(&ingest, reports[..2].to_vec()).await.unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].code, Code::Ok as i32, "{results:?}");
    ingest.stop().await;
}
