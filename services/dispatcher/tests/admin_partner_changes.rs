//! Safe partner changes over real gRPC: enrolling again or updating changes only the fields
//! given and never enables a disabled partner; a dry run changes nothing; the answer and the
//! audit line name every field changed, old -> new; bad input changes nothing. Both backends.
#![allow(clippy::unwrap_used)]

mod common;

use common::Harness;
use tonic::{Code, transport::Channel};
use waybill_proto::v1::{self, dispatch_admin_client::DispatchAdminClient};
use waybill_test_kit::TestBackend;

/// The audit lines about `partner`.
fn audit_of(partner: &str) -> Vec<String> {
    common::audit::lines_with(&format!("partner_id={partner}"))
}

fn minutes(n: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: n * 60,
        nanos: 0,
    })
}

async fn partner(admin: &mut DispatchAdminClient<Channel>, id: &str) -> v1::Partner {
    let listed = admin
        .list_partners(v1::ListPartnersRequest {})
        .await
        .unwrap()
        .into_inner();
    listed.partners.into_iter().find(|p| p.id == id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_changes_on_postgres() {
    partner_changes(TestBackend::Postgres, "acme-pg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_changes_on_sqlite() {
    partner_changes(TestBackend::Sqlite, "acme-lite").await;
}

async fn partner_changes(backend: TestBackend, id: &str) {
    common::audit::capture();
    let h = Harness::new(backend).await;
    let running = h.serve("dispatcher-a").await;
    let mut admin = DispatchAdminClient::connect(format!("http://{}", running.addr))
        .await
        .unwrap();
    admin
        .enroll_partner(v1::EnrollPartnerRequest {
            partner: Some(v1::Partner {
                id: id.into(),
                display_name: "Acme".into(),
                handover_deadline: minutes(10),
                resend_budget: Some(3),
                ..v1::Partner::default()
            }),
        })
        .await
        .unwrap();
    admin
        .disable_partner(v1::DisablePartnerRequest {
            partner_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Enrolling again with a new deadline: only the deadline changes, and it stays disabled.
    let again = admin
        .enroll_partner(v1::EnrollPartnerRequest {
            partner: Some(v1::Partner {
                id: id.into(),
                enabled: true,
                handover_deadline: minutes(5),
                ..v1::Partner::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !again.enabled,
        "a disabled partner is not enabled by enrolling again"
    );
    assert_eq!(again.handover_deadline, minutes(5));
    assert_eq!(again.display_name, "Acme", "omitted: kept");
    assert_eq!(again.resend_budget, Some(3), "omitted: kept, not reset");
    assert_eq!(partner(&mut admin, id).await, again);

    // A dry run answers what would change and changes nothing.
    let before = partner(&mut admin, id).await;
    let dry = admin
        .update_partner(v1::UpdatePartnerRequest {
            partner_id: id.into(),
            enabled: Some(true),
            resend_budget: Some(1),
            dry_run: true,
            ..v1::UpdatePartnerRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!dry.applied);
    assert!(dry.partner.as_ref().unwrap().enabled);
    let fields: Vec<_> = dry
        .changes
        .iter()
        .map(|c| (c.field.as_str(), c.old_value.as_str(), c.new_value.as_str()))
        .collect();
    assert_eq!(
        fields,
        [("resend_budget", "3", "1"), ("enabled", "false", "true")]
    );
    assert_eq!(
        partner(&mut admin, id).await,
        before,
        "the dry run changed nothing"
    );

    // Applied: the answer and the audit line name each field, old -> new.
    let applied = admin
        .update_partner(v1::UpdatePartnerRequest {
            partner_id: id.into(),
            enabled: Some(true),
            handover_deadline: minutes(7),
            ..v1::UpdatePartnerRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(applied.applied);
    assert_eq!(applied.changes.len(), 2);
    let now = partner(&mut admin, id).await;
    assert!(now.enabled);
    assert_eq!(
        (now.handover_deadline, now.resend_budget),
        (minutes(7), Some(3))
    );
    let audit = audit_of(id);
    let enrolled_again = audit
        .iter()
        .find(|l| l.contains("rpc=\"EnrollPartner\"") && l.contains("partner updated"))
        .unwrap_or_else(|| panic!("{audit:?}"));
    assert!(
        enrolled_again.contains(r#"handover_deadline: "10m" -> "5m""#),
        "{enrolled_again}"
    );
    let updated = audit
        .iter()
        .find(|l| l.contains("rpc=\"UpdatePartner\""))
        .unwrap_or_else(|| panic!("{audit:?}"));
    assert!(
        updated.contains(r#"handover_deadline: "5m" -> "7m""#)
            && updated.contains(r#"enabled: "false" -> "true""#),
        "{updated}"
    );
    assert_eq!(
        audit
            .iter()
            .filter(|l| l.contains("rpc=\"UpdatePartner\""))
            .count(),
        1,
        "the dry run is not in the audit trail: {audit:?}"
    );

    // Bad input: a clear status, nothing changed.
    for (request, code) in [
        (
            v1::UpdatePartnerRequest {
                partner_id: "nobody".into(),
                enabled: Some(false),
                ..v1::UpdatePartnerRequest::default()
            },
            Code::NotFound,
        ),
        (
            v1::UpdatePartnerRequest {
                partner_id: id.into(),
                resend_budget: Some(101),
                ..v1::UpdatePartnerRequest::default()
            },
            Code::InvalidArgument,
        ),
        (
            v1::UpdatePartnerRequest {
                partner_id: id.into(),
                display_name: Some(" ".into()),
                ..v1::UpdatePartnerRequest::default()
            },
            Code::InvalidArgument,
        ),
    ] {
        let status = admin.update_partner(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{}", status.message());
    }
    assert_eq!(partner(&mut admin, id).await, now);
}
