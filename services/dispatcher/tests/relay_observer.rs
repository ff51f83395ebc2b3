//! The relay's observer (`RelaySettings::observer`): told, per order, when its row is leased
//! and when the broker acknowledged its partner's copy, in that order; an order with no copy
//! to produce (unroutable) is leased and never produced.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use chrono::Duration as Span;
use common::Harness;
use uuid::Uuid;
use waybill_dispatcher::relay::{Observer, RelayObserver, RelayStep};
use waybill_proto::v1::DispatchState;
use waybill_test_kit::{TestBackend, on_both_backends};

on_both_backends!(the_observer_is_told_each_lease_and_each_acknowledged_produce);

/// Every step it was told, in order.
#[derive(Default)]
struct Steps(Mutex<Vec<(Uuid, RelayStep)>>);

impl RelayObserver for Steps {
    fn step(&self, order_id: Uuid, step: RelayStep) {
        self.0.lock().unwrap().push((order_id, step));
    }
}

impl Steps {
    fn of(&self, order_id: Uuid) -> Vec<RelayStep> {
        let steps = self.0.lock().unwrap();
        steps
            .iter()
            .filter(|(id, _)| *id == order_id)
            .map(|(_, step)| *step)
            .collect()
    }
}

async fn the_observer_is_told_each_lease_and_each_acknowledged_produce(backend: TestBackend) {
    let h = Harness::new(backend).await;
    h.partner("acme", "DE", Span::minutes(10), 2).await;
    let routed = [h.place("DE", 100).await, h.place("DE", 200).await];
    let unroutable = h.place("ZZ", 100).await;
    let steps = Arc::new(Steps::default());
    let mut settings = h.settings("dispatcher-a");
    settings.observer = Observer::new(steps.clone());
    let relay = h.relay_with("dispatcher-a", Arc::new(h.clock.clone()), settings);

    let report = relay.run_cycle(true).await.unwrap();
    assert_eq!(report.due, 3);

    for id in routed {
        assert_eq!(h.dispatch(id).await.state, DispatchState::Sent);
        assert_eq!(steps.of(id), [RelayStep::Leased, RelayStep::Produced]);
    }
    assert_eq!(
        h.dispatch(unroutable).await.state,
        DispatchState::Unroutable
    );
    assert_eq!(steps.of(unroutable), [RelayStep::Leased]);
    assert_eq!(steps.0.lock().unwrap().len(), 5, "nothing else");
}
