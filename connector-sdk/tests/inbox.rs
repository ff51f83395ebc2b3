//! The inbox's contract, one suite run against SQLite and Postgres (a fresh database on the
//! test server, `WAYBILL_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use sqlx::Connection as _;
use waybill_connector_sdk::{
    Clock as _, ManualClock,
    inbox::{
        Inbox, OrderDelivery, OrderState, RecordOrigin, ReportState, SqlInbox, StoredAnswer,
        StoredReport,
    },
};

fn delivery(order_id: &str, reply_to: &str) -> OrderDelivery {
    OrderDelivery {
        order_id: order_id.to_owned(),
        reply_to: reply_to.to_owned(),
        region: "eu".to_owned(),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
    }
}

fn report(report_id: &str, order_id: &str, status: &str) -> StoredReport {
    StoredReport::pending(
        report_id.to_owned(),
        order_id.to_owned(),
        status,
        "TRK-1".to_owned(),
        String::new(),
        String::new(),
        false,
        Utc::now(),
        "http://127.0.0.1:1".to_owned(),
        None,
    )
}

fn origin(offset: i64) -> RecordOrigin {
    RecordOrigin {
        cluster: "eu".to_owned(),
        topic: "waybill.partner.acme".to_owned(),
        partition: 2,
        offset,
        key: "k".to_owned(),
    }
}

/// Whether two instants are the same to the microsecond the inbox keeps.
fn same_instant(a: Option<DateTime<Utc>>, b: DateTime<Utc>) -> bool {
    a.is_some_and(|a| (a - b).num_microseconds().is_some_and(|d| d.abs() < 1))
}

/// An answer's reports scheduled for later (`Acceptance::then_report`): stored in the answer's
/// transaction or not at all, each due at its time, the earliest one the scan's next wake-up.
async fn scheduled_reports(inbox: &dyn Inbox) {
    let p = "acme-later";
    inbox
        .begin(p, &delivery("o-9", "http://eu:50053"))
        .await
        .unwrap();
    let now = Utc::now();
    let (shipped_at, delivered_at) = (now + Duration::hours(1), now + Duration::hours(2));
    let reports = [
        report("o-9:RECEIVED_BY_PARTNER", "o-9", "RECEIVED_BY_PARTNER"),
        report("o-9:later:0", "o-9", "SHIPPED").due_at(shipped_at),
        report("o-9:later:1", "o-9", "DELIVERED").due_at(delivered_at),
    ];
    let accepted = StoredAnswer::Accepted {
        tracking_id: "TRK-1".to_owned(),
    };
    let stored = inbox
        .record_answer(p, "o-9", &accepted, &reports)
        .await
        .unwrap();
    assert_eq!(stored.state, OrderState::Accepted);
    let kept = inbox.reports_of(p, "o-9").await.unwrap();
    assert_eq!(kept.len(), 3, "the answer's report and both scheduled ones");
    assert!(kept.iter().all(|r| r.state == ReportState::Pending));
    let due_at = |id: &str| kept.iter().find(|r| r.report_id == id).unwrap().due_at;
    assert!(same_instant(due_at("o-9:later:0"), shipped_at));
    assert!(same_instant(due_at("o-9:later:1"), delivered_at));
    assert!(due_at("o-9:RECEIVED_BY_PARTNER").is_some_and(|at| at <= Utc::now()));

    // Only the answer's report is due now; the scan sleeps until the SHIPPED is.
    let due = inbox.due_reports(p, Utc::now(), 10).await.unwrap();
    let ids: Vec<&str> = due.iter().map(|r| r.report_id.as_str()).collect();
    assert_eq!(ids, ["o-9:RECEIVED_BY_PARTNER"]);
    let next = inbox.next_report_due(p, Utc::now()).await.unwrap();
    assert!(same_instant(next, shipped_at), "{next:?}");
    let due = inbox.due_reports(p, shipped_at, 10).await.unwrap();
    let ids: Vec<&str> = due.iter().map(|r| r.report_id.as_str()).collect();
    assert_eq!(ids, ["o-9:RECEIVED_BY_PARTNER", "o-9:later:0"]);
    assert_eq!(
        inbox.due_reports(p, delivered_at, 10).await.unwrap().len(),
        3
    );

    // A second answer (another instance's, a late retry's) adds none of its reports.
    let late = inbox
        .record_answer(
            p,
            "o-9",
            &StoredAnswer::Accepted {
                tracking_id: "TRK-2".to_owned(),
            },
            &[
                report("o-9:RECEIVED_BY_PARTNER", "o-9", "RECEIVED_BY_PARTNER"),
                report("o-9:other", "o-9", "SHIPPED").due_at(now),
            ],
        )
        .await
        .unwrap();
    assert_eq!(late.tracking_id, "TRK-1", "the first answer stays");
    assert_eq!(inbox.reports_of(p, "o-9").await.unwrap().len(), 3);

    // Sent and confirmed: nothing left to wake for; not purged while one is pending.
    inbox
        .report_confirmed(p, "o-9:RECEIVED_BY_PARTNER")
        .await
        .unwrap();
    inbox.report_confirmed(p, "o-9:later:0").await.unwrap();
    assert_eq!(
        inbox
            .purge(p, Utc::now() + Duration::seconds(1))
            .await
            .unwrap(),
        0,
        "a scheduled report still pending keeps its order"
    );
    let next = inbox.next_report_due(p, Utc::now()).await.unwrap();
    assert!(same_instant(next, delivered_at), "{next:?}");
}

async fn conformance(inbox: &dyn Inbox) {
    scheduled_reports(inbox).await;
    let p = "acme";
    // First delivery: recorded as started.
    let first = inbox
        .begin(p, &delivery("o-1", "http://eu:50053"))
        .await
        .unwrap();
    assert_eq!(first.state, OrderState::Started);
    assert_eq!(first.deliveries, 1);
    assert_eq!(
        first.adapter_calls, 1,
        "the first call is counted with the delivery"
    );

    // The answer and its report in one step; the first answer wins.
    let stored = inbox
        .record_answer(
            p,
            "o-1",
            &StoredAnswer::Accepted {
                tracking_id: "TRK-1".to_owned(),
            },
            &[report(
                "o-1:RECEIVED_BY_PARTNER",
                "o-1",
                "RECEIVED_BY_PARTNER",
            )],
        )
        .await
        .unwrap();
    assert_eq!(stored.state, OrderState::Accepted);
    assert_eq!(stored.tracking_id, "TRK-1");
    assert_eq!(stored.adapter_calls, 1);
    let late = inbox
        .record_answer(
            p,
            "o-1",
            &StoredAnswer::Rejected {
                reason: "late".to_owned(),
            },
            &[report(
                "o-1:REJECTED_BY_PARTNER",
                "o-1",
                "REJECTED_BY_PARTNER",
            )],
        )
        .await
        .unwrap();
    assert_eq!(late.state, OrderState::Accepted, "the first answer stays");
    assert_eq!(
        inbox.reports_of(p, "o-1").await.unwrap().len(),
        1,
        "no second report"
    );

    // A redelivery is counted and answered from the inbox; the reply-to stays the first one.
    let again = inbox
        .begin(p, &delivery("o-1", "http://other:1"))
        .await
        .unwrap();
    assert_eq!(again.state, OrderState::Accepted);
    assert_eq!(again.deliveries, 2);
    assert_eq!(
        again.adapter_calls, 1,
        "an answered order is not handed to the adapter again"
    );
    assert_eq!(again.reply_to, "http://eu:50053");

    // Partners are separate.
    assert!(inbox.order("other", "o-1").await.unwrap().is_none());
    assert!(
        inbox
            .due_reports("other", Utc::now(), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Reports: due now, retried later, confirmed.
    let due = inbox.due_reports(p, Utc::now(), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].state, ReportState::Pending);
    let later = Utc::now() + Duration::seconds(30);
    inbox
        .report_failed(p, "o-1:RECEIVED_BY_PARTNER", later, "Unavailable: down")
        .await
        .unwrap();
    assert!(
        inbox
            .due_reports(p, Utc::now(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let next = inbox.next_report_due(p, Utc::now()).await.unwrap().unwrap();
    assert!((next - later).num_milliseconds().abs() < 2);
    let due = inbox.due_reports(p, later, 10).await.unwrap();
    assert_eq!(due[0].attempts, 1);
    assert_eq!(due[0].last_error, "Unavailable: down");
    inbox
        .report_confirmed(p, "o-1:RECEIVED_BY_PARTNER")
        .await
        .unwrap();
    assert!(
        inbox
            .next_report_due(p, Utc::now())
            .await
            .unwrap()
            .is_none()
    );

    // Later reports: a repeated report id is left alone.
    assert!(
        inbox
            .add_report(p, &report("r-2", "o-1", "SHIPPED"))
            .await
            .unwrap()
    );
    assert!(
        !inbox
            .add_report(p, &report("r-2", "o-1", "SHIPPED"))
            .await
            .unwrap()
    );
    inbox
        .report_refused(p, "r-2", "PermissionDenied: not routed")
        .await
        .unwrap();
    let reports = inbox.reports_of(p, "o-1").await.unwrap();
    assert_eq!(reports[1].state, ReportState::Refused);

    // Set aside: an order, and a record that is not one (a redelivery is recognised).
    inbox
        .begin(p, &delivery("o-2", "http://eu:50053"))
        .await
        .unwrap();
    inbox
        .set_aside_order(p, "o-2", &origin(7), "adapter failed permanently: no")
        .await
        .unwrap();
    assert_eq!(
        inbox.order(p, "o-2").await.unwrap().unwrap().state,
        OrderState::SetAside
    );
    assert!(!inbox.was_set_aside(p, &origin(8)).await.unwrap());
    assert!(
        inbox
            .set_aside_record(p, &origin(8), "garbage")
            .await
            .unwrap()
    );
    assert!(
        !inbox
            .set_aside_record(p, &origin(8), "garbage")
            .await
            .unwrap()
    );
    assert!(inbox.was_set_aside(p, &origin(8)).await.unwrap());
    let rows = inbox.set_aside_rows(p, 10).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].order_id, "o-2");
    assert_eq!(rows[1].reason, "garbage");

    let counts = inbox.counts(p).await.unwrap();
    assert_eq!(counts.accepted, 1);
    assert_eq!(counts.orders_set_aside, 1);
    assert_eq!(counts.records_set_aside, 2);
    assert_eq!(counts.reports_confirmed, 1);
    assert_eq!(counts.reports_refused, 1);
    assert_eq!(counts.reports_pending, 0);

    // Retention: settled orders go, started ones and pending reports stay.
    inbox
        .begin(p, &delivery("o-3", "http://eu:50053"))
        .await
        .unwrap();
    // Delivered again without an answer: the adapter is asked again (counted), and a retry too.
    let again = inbox
        .begin(p, &delivery("o-3", "http://eu:50053"))
        .await
        .unwrap();
    assert_eq!((again.deliveries, again.adapter_calls), (2, 2));
    inbox.note_adapter_call(p, "o-3").await.unwrap();
    assert_eq!(
        inbox.order(p, "o-3").await.unwrap().unwrap().adapter_calls,
        3
    );
    let purged = inbox
        .purge(p, Utc::now() + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(purged, 2, "o-1 (reports settled) and o-2 (set aside)");
    assert!(inbox.order(p, "o-1").await.unwrap().is_none());
    assert_eq!(
        inbox.order(p, "o-3").await.unwrap().unwrap().state,
        OrderState::Started
    );
}

#[tokio::test]
async fn sqlite_inbox_keeps_its_contract_and_survives_reopening() {
    let dir = std::env::temp_dir().join(format!("waybill-inbox-{}", uuid::Uuid::new_v4()));
    let path = dir.join("inbox.db");
    let inbox = SqlInbox::open_sqlite(&path).await.unwrap();
    conformance(&inbox).await;
    inbox.close().await;
    // Durable: a reopened file still knows the order.
    let reopened = SqlInbox::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert!(reopened.order("acme", "o-3").await.unwrap().is_some());
    // A report scheduled for later is still there, still due at its time.
    let pending: Vec<_> = reopened
        .reports_of("acme-later", "o-9")
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.state == ReportState::Pending)
        .collect();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].report_id, "o-9:later:1");
    assert!(pending[0].due_at.is_some_and(|at| at > Utc::now()));
    reopened.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_inbox_stamps_its_rows_with_the_clock_it_is_given() {
    let dir = std::env::temp_dir().join(format!("waybill-inbox-{}", uuid::Uuid::new_v4()));
    let clock = ManualClock::new(Utc::now() - Duration::days(30));
    let inbox = SqlInbox::open_sqlite(dir.join("inbox.db"))
        .await
        .unwrap()
        .with_clock(Arc::new(clock.clone()));
    let p = "acme";
    inbox
        .begin(p, &delivery("o-1", "http://eu:50053"))
        .await
        .unwrap();
    let answer = StoredAnswer::Accepted {
        tracking_id: "TRK-1".to_owned(),
    };
    inbox
        .record_answer(
            p,
            "o-1",
            &answer,
            &[report("r-1", "o-1", "RECEIVED_BY_PARTNER")],
        )
        .await
        .unwrap();
    inbox.report_confirmed(p, "r-1").await.unwrap();
    // Settled thirty days ago by the inbox's clock: past a week's retention however late the
    // test runs, and not yet past it a day before it was settled.
    let settled = clock.now();
    assert_eq!(
        inbox.purge(p, settled - Duration::days(1)).await.unwrap(),
        0
    );
    assert_eq!(
        inbox
            .purge(p, settled + Duration::seconds(1))
            .await
            .unwrap(),
        1
    );
    inbox.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn postgres_inbox_keeps_its_contract() {
    let admin = std::env::var("WAYBILL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let name = format!("waybill_inbox_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = match admin.rfind('/') {
        Some(at) => format!("{}/{name}", &admin[..at]),
        None => panic!("admin url {admin} has no database"),
    };
    {
        // Two instances opening together create the schema once.
        let (a, b) = tokio::join!(SqlInbox::connect_postgres(&url), SqlInbox::open(&url));
        let (a, b) = (a.unwrap(), b.unwrap());
        conformance(&a).await;
        assert!(b.order("acme", "o-3").await.unwrap().is_some(), "shared");
        assert!(
            b.next_report_due("acme-later", Utc::now())
                .await
                .unwrap()
                .is_some(),
            "a scheduled report, seen by the other instance"
        );
        a.close().await;
        b.close().await;
    }
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
}
