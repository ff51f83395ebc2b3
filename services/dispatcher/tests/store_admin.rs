//! The `DispatchStore` conformance suite, part two (part one: `store_conformance.rs`), run
//! against Postgres and SQLite: what the admin API stores — partners, keys, routes — and paging
//! through dispatches.
#![allow(clippy::unwrap_used)]

mod common;

use chrono::Duration as Span;
use common::Harness;
use uuid::Uuid;
use waybill_dispatcher::{
    domain::model::{DispatchFilter, PartnerKeyRecord},
    store::StoreError,
};
use waybill_proto::v1::DispatchState;
use waybill_test_kit::{TestBackend, on_both_backends};

on_both_backends!(partners_keys_and_routes, dispatches_page_by_id);

async fn partners_keys_and_routes(backend: TestBackend) {
    let h = Harness::new(backend).await;
    let created = h.partner("acme", "DE", Span::minutes(5), 1).await;
    h.clock.advance(Span::seconds(10));
    let mut changed = created.clone();
    changed.display_name = "Acme 2".into();
    changed.updated_at = h.clock_now();
    let updated = h.store.upsert_partner(&changed).await.unwrap();
    assert_eq!(
        (updated.display_name.as_str(), updated.created_at),
        ("Acme 2", created.created_at),
        "created_at kept"
    );
    assert_eq!(updated.handover_deadline, Span::minutes(5));
    assert!(
        !h.store
            .disable_partner("acme", h.clock_now())
            .await
            .unwrap()
            .unwrap()
            .enabled
    );
    assert!(
        h.store
            .disable_partner("ghost", h.clock_now())
            .await
            .unwrap()
            .is_none()
    );
    let table = h.store.routing_table().await.unwrap();
    assert!(
        table
            .route(&waybill_dispatcher::domain::model::ShipTo {
                country_code: "DE".into(),
                ..Default::default()
            })
            .is_none(),
        "disabled partner"
    );

    let key = PartnerKeyRecord {
        partner_id: "acme".into(),
        key_id: "k1".into(),
        public_key: vec![1; 32],
        created_at: h.clock_now(),
        revoked_at: None,
        last_used_at: None,
    };
    h.store.add_key(&key).await.unwrap();
    assert!(matches!(
        h.store.add_key(&key).await,
        Err(StoreError::Duplicate)
    ));
    let orphan = PartnerKeyRecord {
        partner_id: "ghost".into(),
        ..key.clone()
    };
    assert!(matches!(
        h.store.add_key(&orphan).await,
        Err(StoreError::MissingReference)
    ));
    let first = h
        .store
        .revoke_key("acme", "k1", h.clock_now())
        .await
        .unwrap()
        .unwrap()
        .revoked_at;
    h.clock.advance(Span::seconds(1));
    assert_eq!(
        h.store
            .revoke_key("acme", "k1", h.clock_now())
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        first
    );
    assert!(
        h.store
            .revoke_key("acme", "k9", h.clock_now())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        h.store.list_keys("acme").await.unwrap(),
        [waybill_dispatcher::domain::model::PartnerKeyRecord {
            revoked_at: first,
            ..key
        }]
    );

    let mut route = h.store.list_routes().await.unwrap().remove(0);
    route.priority = 99;
    assert_eq!(
        h.store
            .set_route(&route, h.clock_now())
            .await
            .unwrap()
            .priority,
        99
    );
    route.partner_id = "ghost".into();
    assert!(matches!(
        h.store.set_route(&route, h.clock_now()).await,
        Err(StoreError::MissingReference)
    ));
    assert!(h.store.delete_route(&route.id).await.unwrap());
    assert!(!h.store.delete_route(&route.id).await.unwrap());
    assert!(h.store.list_routes().await.unwrap().is_empty());
}

async fn dispatches_page_by_id(backend: TestBackend) {
    let h = Harness::new(backend).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(h.place("DE", 1).await);
    }
    ids.sort();
    let all = DispatchFilter::default();
    let first = h.store.list_dispatches(&all, None, 3).await.unwrap();
    let rest = h
        .store
        .list_dispatches(&all, first.last().map(|r| r.order_id), 3)
        .await
        .unwrap();
    let paged: Vec<Uuid> = first.iter().chain(&rest).map(|r| r.order_id).collect();
    assert_eq!(paged, ids);
    let none = DispatchFilter {
        state: Some(DispatchState::Dead),
        partner_id: None,
    };
    assert!(
        h.store
            .list_dispatches(&none, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}
