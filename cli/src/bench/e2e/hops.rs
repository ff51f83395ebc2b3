//! Where the time goes: each order's journey cut into hops between consecutive points —
//! scheduled, placed (`PlaceOrder` answered: the transaction committed), the relay's lease and
//! the broker's acknowledgement, the connector's consume, inbox record, adapter call and
//! answer, the answer stored, the report sent, and `RECEIVED_BY_PARTNER` recorded by
//! StatusIngest (`recorded_at`, read back from the database) — with p50, p99 and max of each.
//!
//! A point seen before the one it follows (the relay can lease an order before its
//! `PlaceOrder` answer has travelled back; the consumer can read a record before the relay's
//! produce call returns for the whole batch) counts as 0 ms, and the hop says how many did
//! (`overlapped`).

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::{
    load::Placed,
    timeline::{Mark, Timeline, Track},
};
use crate::bench::measure::{Latency, new_histogram};

/// A point of an order's journey.
#[derive(Debug, Clone, Copy)]
enum Point {
    Scheduled,
    Placed,
    Step(Mark),
    Received,
}

/// The hops, in order: name, from, to.
const HOPS: [(&str, Point, Point); 10] = [
    ("placing (gRPC + commit)", Point::Scheduled, Point::Placed),
    (
        "committed → leased",
        Point::Placed,
        Point::Step(Mark::Leased),
    ),
    (
        "leased → produce acknowledged",
        Point::Step(Mark::Leased),
        Point::Step(Mark::Produced),
    ),
    (
        "produced → consumed",
        Point::Step(Mark::Produced),
        Point::Step(Mark::Consumed),
    ),
    (
        "consumed → stored in the inbox",
        Point::Step(Mark::Consumed),
        Point::Step(Mark::Recorded),
    ),
    (
        "inbox → adapter called",
        Point::Step(Mark::Recorded),
        Point::Step(Mark::AdapterCalled),
    ),
    (
        "adapter called → answered",
        Point::Step(Mark::AdapterCalled),
        Point::Step(Mark::Answered),
    ),
    (
        "answered → answer stored",
        Point::Step(Mark::Answered),
        Point::Step(Mark::AnswerStored),
    ),
    (
        "answer stored → report sent",
        Point::Step(Mark::AnswerStored),
        Point::Step(Mark::ReportSent),
    ),
    (
        "report sent → recorded by StatusIngest",
        Point::Step(Mark::ReportSent),
        Point::Received,
    ),
];

/// One hop's figures.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Hop {
    pub(super) hop: &'static str,
    #[serde(flatten)]
    pub(super) latency_ms: Latency,
    /// Orders measured.
    pub(super) orders: u64,
    /// Of those, orders whose later point came first (counted as 0 ms).
    pub(super) overlapped: u64,
}

/// Every hop, and the totals from the scheduled send.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct Hops {
    pub(super) hops: Vec<Hop>,
    /// Scheduled → placed.
    pub(super) place_ms: Latency,
    /// Scheduled → the adapter's first call.
    pub(super) to_adapter_ms: Latency,
    /// Scheduled → `RECEIVED_BY_PARTNER` recorded.
    pub(super) to_received_ms: Latency,
    /// Orders that reached the adapter.
    pub(super) at_adapter: u64,
    /// Orders recorded received.
    pub(super) received: u64,
}

/// The journey of each placed order (with its `tracks` and `received_at`, aligned with it).
pub(super) fn measure(
    timeline: &Timeline,
    placed: &[Placed],
    tracks: &[Option<Track>],
    received_at: &[Option<DateTime<Utc>>],
) -> anyhow::Result<Hops> {
    let mut hops: Vec<(Histogram<u64>, u64)> = Vec::with_capacity(HOPS.len());
    for _ in HOPS {
        hops.push((new_histogram()?, 0));
    }
    let (mut place, mut to_adapter, mut to_received) =
        (new_histogram()?, new_histogram()?, new_histogram()?);
    for ((order, track), received) in placed.iter().zip(tracks).zip(received_at) {
        let received = received.and_then(|at| timeline.wall_micros(at));
        let at = |point: Point| match point {
            Point::Scheduled => Some(order.scheduled),
            Point::Placed => Some(order.answered),
            Point::Step(mark) => track.and_then(|t| t.at(mark)),
            Point::Received => received,
        };
        for ((_, from, to), (histogram, overlapped)) in HOPS.iter().zip(&mut hops) {
            if let (Some(from), Some(to)) = (at(*from), at(*to)) {
                if to < from {
                    *overlapped += 1;
                }
                histogram.saturating_record(to.saturating_sub(from).max(1));
            }
        }
        let since_scheduled =
            |point| at(point).map(|to: u64| to.saturating_sub(order.scheduled).max(1));
        if let Some(micros) = since_scheduled(Point::Placed) {
            place.saturating_record(micros);
        }
        if let Some(micros) = since_scheduled(Point::Step(Mark::AdapterCalled)) {
            to_adapter.saturating_record(micros);
        }
        if let Some(micros) = since_scheduled(Point::Received) {
            to_received.saturating_record(micros);
        }
    }
    Ok(Hops {
        hops: HOPS
            .iter()
            .zip(hops)
            .map(|((name, _, _), (histogram, overlapped))| Hop {
                hop: name,
                latency_ms: Latency::of(&histogram),
                orders: histogram.len(),
                overlapped,
            })
            .collect(),
        place_ms: Latency::of(&place),
        at_adapter: to_adapter.len(),
        received: to_received.len(),
        to_adapter_ms: Latency::of(&to_adapter),
        to_received_ms: Latency::of(&to_received),
    })
}

impl Hops {
    /// A table, one hop a line, then the totals.
    pub(super) fn to_text(&self) -> String {
        let line = |name: &str, latency: &Latency, orders: u64, note: String| {
            format!(
                "    {name:<40} {:>9.2} {:>9.2} {:>9.2} {orders:>8}{note}\n",
                latency.p50, latency.p99, latency.max
            )
        };
        let mut text = format!(
            "    {:<40} {:>9} {:>9} {:>9} {:>8}\n",
            "hop (ms)", "p50", "p99", "max", "orders"
        );
        // A hop nobody observed (the services in processes of their own) is left out.
        for hop in self.hops.iter().filter(|hop| hop.orders > 0) {
            let note = if hop.overlapped > 0 {
                format!("  ({} overlapped: 0 ms)", hop.overlapped)
            } else {
                String::new()
            };
            text += &line(hop.hop, &hop.latency_ms, hop.orders, note);
        }
        if self.at_adapter > 0 {
            text += &line(
                "scheduled → adapter called (total)",
                &self.to_adapter_ms,
                self.at_adapter,
                String::new(),
            );
        }
        text += &line(
            "scheduled → received (total)",
            &self.to_received_ms,
            self.received,
            String::new(),
        );
        text
    }
}
