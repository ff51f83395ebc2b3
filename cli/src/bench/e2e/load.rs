//! The open-loop generator: order *i* of a step is sent at `start + i / rate` on a task of its
//! own, whether or not earlier calls have answered, so a slow system shows up as latency and as
//! orders sent behind schedule, never as a quietly lower offered rate. Each order is to
//! `distance-freight` (Canada), which only acknowledges: no later reports in the way.
//! A placing Orders refuses at the door is retried within a budget ([`super::door`]) and
//! counted apart from errors: shedding is how an overloaded Orders answers, not a loss.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tonic::transport::Channel;
use uuid::Uuid;
use waybill_proto::v1::{self as pb, order_service_client::OrderServiceClient};

use super::{door, timeline::Timeline};

/// A send this late after its scheduled time counts as behind the schedule.
const BEHIND: Duration = Duration::from_millis(10);
/// How often the backlog is sampled (and progress printed).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// One placed order, its times in microseconds since the timeline's origin.
#[derive(Debug, Clone, Copy)]
pub(super) struct Placed {
    pub(super) id: Uuid,
    /// When it was due to be sent: every latency counts from here, so a generator that falls
    /// behind cannot hide its own delay.
    pub(super) scheduled: u64,
    /// When `PlaceOrder` answered (its transaction committed by then).
    pub(super) answered: u64,
}

/// The backlog at one moment of a step: orders placed whose report was not yet confirmed.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub(super) struct Sample {
    /// Seconds since the step started.
    pub(super) at_s: f64,
    pub(super) backlog: u64,
}

/// What one step offered and what came of each call.
#[derive(Debug, Default)]
pub(super) struct Offered {
    pub(super) offered: u64,
    pub(super) placed: Vec<Placed>,
    /// The indexes of the orders not placed: refused at the door (its last answer) or failed.
    pub(super) failed: Vec<u64>,
    /// Of `failed`, the orders whose last answer was a refusal at the door.
    pub(super) refused: u64,
    /// Orders placed after the door refused them at least once.
    pub(super) placed_on_retry: u64,
    /// Calls refused at the door in all.
    pub(super) refusals: u64,
    pub(super) behind_schedule: u64,
    pub(super) max_behind: Duration,
    pub(super) samples: Vec<Sample>,
}

/// The idempotency key of order `index` of the step whose keys start with `prefix` (the
/// ledger finds the step's orders in the database by it).
pub(super) fn idempotency_key(prefix: &str, index: u64) -> String {
    format!("{prefix}{index}")
}

/// Offers `rate` orders a second for `duration` through `clients`, keys starting with
/// `prefix`; samples the backlog every second (from the timeline's confirmations) and prints
/// progress on stderr.
pub(super) async fn offer(
    clients: &[OrderServiceClient<Channel>],
    timeline: &Timeline,
    prefix: &str,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Offered> {
    let count = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let placed_so_far = Arc::new(AtomicU64::new(0));
    let confirmed_before = timeline.confirmed();
    let mut offered = Offered {
        offered: count,
        ..Offered::default()
    };
    let budget = Arc::new(door::retry_budget());
    let mut tasks = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let start = tokio::time::Instant::now();
    let mut next_sample = SAMPLE_EVERY;
    for index in 0..count {
        let due = start + interval.mul_f64(index as f64);
        tokio::time::sleep_until(due).await;
        let late = tokio::time::Instant::now().saturating_duration_since(due);
        if late > BEHIND {
            offered.behind_schedule += 1;
        }
        offered.max_behind = offered.max_behind.max(late);
        let client = clients[index as usize % clients.len()].clone();
        let request = order(&idempotency_key(prefix, index), index);
        let (answered_ok, budget) = (placed_so_far.clone(), budget.clone());
        tasks.push(tokio::spawn(async move {
            let (response, refusals) = door::retried(budget.as_ref(), || {
                let (mut client, request) = (client.clone(), request.clone());
                async move { client.place_order(request).await }
            })
            .await;
            let answered = Instant::now();
            let id = response.map(|r| r.into_inner().order.map(|o| o.id).unwrap_or_default());
            if id.is_ok() {
                answered_ok.fetch_add(1, Ordering::Relaxed);
            }
            (id, refusals, answered)
        }));
        let elapsed = start.elapsed();
        if elapsed >= next_sample {
            next_sample = elapsed + SAMPLE_EVERY;
            let sample = sample(elapsed, &placed_so_far, timeline, confirmed_before);
            eprintln!(
                "  {:>5.1} s: offered {}, placed {}, backlog {}, behind schedule {}",
                sample.at_s,
                index + 1,
                placed_so_far.load(Ordering::Relaxed),
                sample.backlog,
                offered.behind_schedule,
            );
            offered.samples.push(sample);
        }
    }
    for (index, task) in (0u64..).zip(tasks) {
        let (response, refusals, answered) = task.await?;
        offered.refusals += u64::from(refusals);
        match response.map(|id| Uuid::parse_str(&id)) {
            Ok(Ok(id)) => {
                offered.placed_on_retry += u64::from(refusals > 0);
                offered.placed.push(Placed {
                    id,
                    scheduled: timeline.micros((start + interval.mul_f64(index as f64)).into_std()),
                    answered: timeline.micros(answered),
                });
            }
            Ok(Err(_)) => offered.failed.push(index),
            Err(status) if door::refused(&status) => {
                offered.refused += 1;
                offered.failed.push(index);
            }
            Err(status) => {
                if offered.failed.len() < 3 {
                    eprintln!("place failed: {status}");
                }
                offered.failed.push(index);
            }
        }
    }
    offered.samples.push(sample(
        start.elapsed(),
        &placed_so_far,
        timeline,
        confirmed_before,
    ));
    Ok(offered)
}

fn sample(elapsed: Duration, answered: &AtomicU64, timeline: &Timeline, before: u64) -> Sample {
    let confirmed = timeline.confirmed().saturating_sub(before);
    Sample {
        at_s: elapsed.as_secs_f64(),
        backlog: answered.load(Ordering::Relaxed).saturating_sub(confirmed),
    }
}

/// An order to `distance-freight`: one book to Toronto, from one of a thousand customers.
fn order(idempotency_key: &str, index: u64) -> pb::PlaceOrderRequest {
    pb::PlaceOrderRequest {
        idempotency_key: idempotency_key.to_owned(),
        customer: Some(pb::Customer {
            id: format!("e2e-customer-{}", index % 1000),
            name: "Bench Customer".into(),
            email: "bench@example.com".into(),
            ..Default::default()
        }),
        shipping_address: Some(pb::Address {
            line1: "1 Main St".into(),
            city: "Toronto".into(),
            country_code: "CA".into(),
            ..Default::default()
        }),
        lines: vec![pb::LineItem {
            sku: "BOOK-042".into(),
            quantity: 1,
        }],
    }
}
