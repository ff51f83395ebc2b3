//! When each order reached each step of the loop, as the relay's and the connector SDK's
//! observers report it: one [`Timeline`] is both observers. Times are microseconds since the
//! timeline's origin on one monotonic clock; a wall-clock time read back from the database
//! (StatusIngest's `recorded_at`) is placed on the same axis through the wall-clock time taken
//! with the origin.
//!
//! Each step keeps its first time per order (a retry or a redelivery does not move it) and the
//! adapter's answers are counted (two answers for one order is an order taken twice). The
//! observers are called on the relay's and the connector's own threads: one short lock, no
//! allocation beyond the order's entry.

use std::{
    collections::HashMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;
use waybill_connector_sdk::{PipelineObserver, Step};
use waybill_dispatcher::relay::{RelayObserver, RelayStep};

/// A step of an order through the loop after it was placed, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mark {
    /// The relay leased its row.
    Leased,
    /// The broker acknowledged its partner's copy to the relay.
    Produced,
    /// The connector read it from the partner topic.
    Consumed,
    /// Its delivery is durable in the connector's inbox.
    Recorded,
    /// The adapter was called with it (first attempt).
    AdapterCalled,
    /// The adapter answered.
    Answered,
    /// The answer and its report are durable in the inbox.
    AnswerStored,
    /// Its report was sent to StatusIngest (first attempt).
    ReportSent,
    /// StatusIngest confirmed its report.
    ReportConfirmed,
}

const MARKS: usize = 9;

impl Mark {
    /// Every step, in order.
    const ALL: [Mark; MARKS] = [
        Mark::Leased,
        Mark::Produced,
        Mark::Consumed,
        Mark::Recorded,
        Mark::AdapterCalled,
        Mark::Answered,
        Mark::AnswerStored,
        Mark::ReportSent,
        Mark::ReportConfirmed,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// A short name (`leased`, `produced`, …).
    pub(super) fn name(self) -> &'static str {
        match self {
            Mark::Leased => "leased",
            Mark::Produced => "produced",
            Mark::Consumed => "consumed",
            Mark::Recorded => "recorded",
            Mark::AdapterCalled => "adapter_called",
            Mark::Answered => "answered",
            Mark::AnswerStored => "answer_stored",
            Mark::ReportSent => "report_sent",
            Mark::ReportConfirmed => "report_confirmed",
        }
    }

    fn of_connector(step: Step) -> Self {
        match step {
            Step::Consumed => Self::Consumed,
            Step::Recorded => Self::Recorded,
            Step::AdapterCalled => Self::AdapterCalled,
            Step::Answered => Self::Answered,
            Step::AnswerStored => Self::AnswerStored,
            Step::ReportSent => Self::ReportSent,
            Step::ReportConfirmed => Self::ReportConfirmed,
        }
    }
}

/// One order's steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Track {
    /// Microseconds since the origin, plus one, of each step's first time; 0 until it happens.
    at: [u64; MARKS],
    /// How many times the adapter answered it.
    pub(super) answers: u32,
}

impl Track {
    /// When `mark` first happened, in microseconds since the origin.
    pub(super) fn at(&self, mark: Mark) -> Option<u64> {
        self.at[mark.index()].checked_sub(1)
    }

    /// The step it took last (by time), if any.
    pub(super) fn last_step(&self) -> Option<Mark> {
        Mark::ALL
            .into_iter()
            .filter_map(|mark| Some((self.at(mark)?, mark)))
            .max_by_key(|(at, mark)| (*at, mark.index()))
            .map(|(_, mark)| mark)
    }

    /// `mark` happened at `micros` (kept only if it is the first time).
    pub(super) fn set(&mut self, mark: Mark, micros: u64) {
        let slot = &mut self.at[mark.index()];
        if *slot == 0 {
            *slot = micros.saturating_add(1);
        }
        if mark == Mark::Answered {
            self.answers += 1;
        }
    }
}

/// Every order's steps since the origin (see the module documentation).
pub(super) struct Timeline {
    origin: Instant,
    origin_wall: DateTime<Utc>,
    orders: Mutex<HashMap<Uuid, Track>>,
    /// Orders whose report StatusIngest confirmed (each counted once), watched by whoever
    /// waits for the loop to drain.
    confirmed: watch::Sender<u64>,
    /// Microseconds since the origin of the latest step of any order.
    latest: AtomicU64,
}

impl Timeline {
    pub(super) fn new() -> Self {
        Self {
            origin: Instant::now(),
            origin_wall: Utc::now(),
            orders: Mutex::default(),
            confirmed: watch::Sender::new(0),
            latest: AtomicU64::new(0),
        }
    }

    /// `at` in microseconds since the origin (0 before it).
    pub(super) fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_micros()).unwrap_or(u64::MAX)
    }

    /// A wall-clock time in microseconds since the origin (`None` before it).
    pub(super) fn wall_micros(&self, at: DateTime<Utc>) -> Option<u64> {
        u64::try_from((at - self.origin_wall).num_microseconds()?).ok()
    }

    /// Microseconds since the origin now.
    pub(super) fn now(&self) -> u64 {
        self.micros(Instant::now())
    }

    /// The steps of each of `orders` (`None` for an order no observer has seen), read under
    /// one lock.
    pub(super) fn tracks(&self, orders: impl Iterator<Item = Uuid>) -> Vec<Option<Track>> {
        let tracks = self.orders.lock().unwrap_or_else(PoisonError::into_inner);
        orders.map(|id| tracks.get(&id).copied()).collect()
    }

    /// Orders whose report was confirmed so far.
    pub(super) fn confirmed(&self) -> u64 {
        *self.confirmed.borrow()
    }

    /// The count of confirmed orders, to wait for its changes.
    pub(super) fn watch_confirmed(&self) -> watch::Receiver<u64> {
        self.confirmed.subscribe()
    }

    /// How long since any order took a step.
    pub(super) fn quiet_for(&self) -> Duration {
        Duration::from_micros(
            self.now()
                .saturating_sub(self.latest.load(Ordering::Relaxed)),
        )
    }

    /// Marks `order_id`'s report confirmed now: for orders whose steps no observer sees (the
    /// services in processes of their own), learnt from the database.
    pub(super) fn confirm(&self, order_id: Uuid) {
        self.mark(order_id, Mark::ReportConfirmed);
    }

    fn mark(&self, order_id: Uuid, mark: Mark) {
        let now = self.now();
        self.latest.fetch_max(now, Ordering::Relaxed);
        let first_confirmation = {
            let mut orders = self.orders.lock().unwrap_or_else(PoisonError::into_inner);
            let track = orders.entry(order_id).or_default();
            let first = mark == Mark::ReportConfirmed && track.at(mark).is_none();
            track.set(mark, now);
            first
        };
        if first_confirmation {
            self.confirmed.send_modify(|count| *count += 1);
        }
    }
}

impl PipelineObserver for Timeline {
    fn step(&self, order_id: &str, step: Step) {
        // The bench's orders all have UUID ids; anything else is not one of them.
        if let Ok(id) = Uuid::parse_str(order_id) {
            self.mark(id, Mark::of_connector(step));
        }
    }
}

impl RelayObserver for Timeline {
    fn step(&self, order_id: Uuid, step: RelayStep) {
        self.mark(
            order_id,
            match step {
                RelayStep::Leased => Mark::Leased,
                RelayStep::Produced => Mark::Produced,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_keeps_its_first_time_and_answers_are_counted() {
        let timeline = Timeline::new();
        let id = Uuid::now_v7();
        RelayObserver::step(&timeline, id, RelayStep::Leased);
        PipelineObserver::step(&timeline, &id.to_string(), Step::Answered);
        let first = timeline.tracks([id].into_iter())[0].expect("seen");
        PipelineObserver::step(&timeline, &id.to_string(), Step::Answered);
        RelayObserver::step(&timeline, id, RelayStep::Leased);
        let track = timeline.tracks([id].into_iter())[0].expect("seen");
        assert_eq!(track.at(Mark::Leased), first.at(Mark::Leased));
        assert_eq!(track.at(Mark::Answered), first.at(Mark::Answered));
        assert_eq!(track.answers, 2);
        assert_eq!(track.at(Mark::Consumed), None);
        assert!(timeline.tracks([Uuid::now_v7()].into_iter())[0].is_none());
        // Not a bench order: ignored.
        PipelineObserver::step(&timeline, "not-a-uuid", Step::Consumed);
        assert_eq!(timeline.orders.lock().expect("unpoisoned").len(), 1);
    }

    #[test]
    fn confirmations_are_counted_once_per_order() {
        let timeline = Timeline::new();
        let (a, b) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
        for id in [&a, &a, &b] {
            PipelineObserver::step(&timeline, id, Step::ReportConfirmed);
        }
        assert_eq!(timeline.confirmed(), 2);
        assert!(timeline.quiet_for() < Duration::from_secs(60));
    }
}
