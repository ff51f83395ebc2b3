//! Property test of `ReportStatus` over real gRPC on both backends: arbitrary text — NUL and
//! the other control characters above all — in every text that reaches a query (the request's
//! ids, tracking id, detail and detail code; the token's `kid`, `iss` and `jti`) never gets
//! INTERNAL/UNKNOWN or an unbounded message. Postgres refuses a NUL in `text` where SQLite
//! stores it, so only a check before the query answers both the same way.
//!
//! Each field is either a value that passes (so that later checks, and the store, are reached)
//! or hostile text; the token is signed by the enrolled key over whatever the request says, so a
//! hostile field can get past the signature into the report's transaction. A short run by
//! default; `PROPTEST_CASES=5000 cargo test -p waybill-status-ingest --release --test
//! properties` runs longer.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::{AUDIENCE, service::Service, signer};
use proptest::{prelude::*, test_runner::TestRunner};
use tonic::Code;
use waybill_proto::{
    time::to_timestamp,
    v1::{OrderStatus, ReportStatusRequest},
};
use waybill_service_kit::text::MAX_MESSAGE_BYTES;
use waybill_test_kit::TestBackend;
use waybill_token::{Report, ReportClaims};

/// Text as an attacker sends it: ordinary, control characters (NUL most of all), odd Unicode,
/// very long.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => ".{0,40}",
        3 => "[\\x00-\\x1f\\x7f\u{80}-\u{9f}a-zA-Z0-9_-]{0,20}",
        2 => "\\x00{1,3}",
        1 => "[\u{202e}\u{feff}\u{10ffff}\u{e000}é\"\\\\]{0,12}",
        1 => (0_usize..3_000, any::<char>()).prop_map(|(n, c)| c.to_string().repeat(n)),
    ]
}

/// `valid` as it is (mostly: a case must often pass every other check to reach the store), with
/// a NUL put somewhere into it, or hostile text instead.
fn field(valid: String) -> impl Strategy<Value = String> {
    let with_nul = (Just(valid.clone()), 0_usize..=valid.len()).prop_map(|(mut text, at)| {
        let at = (0..=at)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text.insert(at, '\0');
        text
    });
    prop_oneof![10 => Just(valid), 1 => with_nul, 1 => hostile_text()]
}

/// One request and what its token says, each text either passing or hostile.
#[derive(Debug, Clone)]
struct Case {
    request: ReportStatusRequest,
    kid: String,
    iss: String,
    jti: String,
}

/// Report ids from a small set: accepted, duplicate and reused-id paths of the store are all
/// reached.
fn case(order: String) -> impl Strategy<Value = Case> {
    let request = (
        field(order),
        field("acme".into()),
        "r-[0-6]".prop_flat_map(field),
        field("1Z999".into()),
        field("left the depot\nbay 4".into()),
        field("IN_TRANSIT".into()),
        any::<bool>(),
    );
    let token = (
        field("k1".into()),
        field("acme".into()),
        field("jti".into()),
    );
    (request, token).prop_map(
        |(
            (correlation_id, partner_id, report_id, tracking_id, detail, detail_code, action),
            (kid, iss, jti),
        )| Case {
            request: ReportStatusRequest {
                correlation_id,
                partner_id,
                report_id,
                status: OrderStatus::Shipped.into(),
                tracking_id,
                detail,
                occurred_at: None,
                token: String::new(),
                detail_code,
                action_required: action,
            },
            kid,
            iss,
            jti,
        },
    )
}

/// `case` signed by acme's enrolled key (seed 1) at `now`, over the request's own fields, with
/// the case's `kid`, `iss` and a `jti` made unique per case (so valid ones are not replays).
fn signed(case: Case, now: chrono::DateTime<chrono::Utc>, serial: u64) -> ReportStatusRequest {
    let mut request = case.request;
    let report = Report {
        partner_id: case.iss,
        order_id: request.correlation_id.clone(),
        report_id: request.report_id.clone(),
        status: OrderStatus::Shipped.short_name().to_owned(),
        tracking_id: request.tracking_id.clone(),
        detail: request.detail.clone(),
        detail_code: request.detail_code.clone(),
        action_required: request.action_required,
        occurred_at: now,
    };
    let jti = format!("{}-{serial}", case.jti);
    request.token = signer(1, &case.kid).sign(&ReportClaims::new(&report, AUDIENCE, now, 120, jti));
    request.occurred_at = Some(to_timestamp(now));
    request
}

#[test]
fn hostile_text_in_anything_that_reaches_a_query_never_gets_an_internal_error() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(96);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for backend in [TestBackend::Postgres, TestBackend::Sqlite] {
        let (world, order, _) = runtime.block_on(common::service::world(backend));
        let ingest = runtime.block_on(Service::start(world.deps()));
        let now = world.now();
        let mut runner = TestRunner::new(ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let serial = AtomicU64::new(0);
        let accepted = AtomicU64::new(0);
        runner
            .run(&case(order.to_string()), |case| {
                let request = signed(case, now, serial.fetch_add(1, Ordering::Relaxed));
                let result = runtime.block_on(ingest.client.clone().report_status(request));
                match result {
                    Ok(_) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => {
                        prop_assert!(
                            !matches!(status.code(), Code::Internal | Code::Unknown),
                            "{:?}: {}",
                            status.code(),
                            status.message()
                        );
                        prop_assert!(status.message().len() <= MAX_MESSAGE_BYTES);
                    }
                }
                Ok(())
            })
            .unwrap_or_else(|failure| panic!("{backend:?}: {failure}"));
        // The generator reaches the store too, not only the field checks.
        assert!(
            accepted.load(Ordering::Relaxed) > 0,
            "{backend:?}: no case was accepted"
        );
        let stats = runtime.block_on(ingest.stats());
        assert_eq!(
            stats.rejected.get("internal").copied().unwrap_or_default(),
            0
        );
        runtime.block_on(ingest.stop());
    }
}
