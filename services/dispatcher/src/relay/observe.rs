//! Watching orders through the relay, for latency figures (`waybill bench e2e` times each hop
//! of an order with it): an observer set in [`RelaySettings::observer`] is told, per order,
//! when its row was leased and when the broker acknowledged its partner's copy. It is called
//! on the relay's task and must return at once (take a timestamp, count); it is never told
//! anything it could use to change the order's course. With none set nothing is called and
//! nothing is allocated.
//!
//! [`RelaySettings::observer`]: crate::RelaySettings::observer

use std::sync::Arc;

use uuid::Uuid;

use crate::domain::model::LeasedOrder;

/// A step of one order through the relay, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayStep {
    /// Its row was leased by this instance (due, or overdue for a re-send).
    Leased,
    /// The broker acknowledged its partner's copy (the batch's produce call returned).
    Produced,
}

/// Told of every order's steps through the relay (see the module documentation).
pub trait RelayObserver: Send + Sync + 'static {
    /// `order_id` reached `step` now.
    fn step(&self, order_id: Uuid, step: RelayStep);
}

/// The relay's observer, if any: free when none is set.
#[derive(Clone, Default)]
pub struct Observer(Option<Arc<dyn RelayObserver>>);

impl Observer {
    /// Tells `observer` of every order's steps.
    pub fn new(observer: Arc<dyn RelayObserver>) -> Self {
        Self(Some(observer))
    }

    /// Every order of a leased batch.
    pub(crate) fn leased(&self, orders: &[LeasedOrder]) {
        if let Some(observer) = &self.0 {
            for order in orders {
                observer.step(order.order_id, RelayStep::Leased);
            }
        }
    }

    /// One order whose partner's copy the broker acknowledged.
    pub(crate) fn produced(&self, order_id: Uuid) {
        if let Some(observer) = &self.0 {
            observer.step(order_id, RelayStep::Produced);
        }
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Observer(set)"
        } else {
            "Observer(none)"
        })
    }
}
