//! A placing Orders refuses at the door, retried as a well-behaved storefront would.
//!
//! An overloaded Orders sheds calls past its per-connection concurrency limit with
//! `RESOURCE_EXHAUSTED` (tonic's "Too many active requests for the connection"), and answers
//! `UNAVAILABLE` while it is not serving; neither call did anything, so repeating it under the
//! same idempotency key is safe. Each order retries with jittered exponential backoff, and all
//! orders share tower's retry budget ([`TpsBudget`]): retries at most a tenth of the placings of
//! the last 10 s, plus one a second. Without a budget, retries under a sustained overload
//! multiply the calls (seen: 1.6 million refused calls for 264,000 orders at 2,200/s, and
//! Orders never caught up); with it they add at most a tenth.

use std::{future::Future, time::Duration};

use tonic::{Code, Status};
use tower::retry::budget::{Budget, TpsBudget};
use waybill_connector_sdk::domain::backoff::Backoff;

/// The wait before a refused placing is tried again (full jitter).
const BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(25),
    cap: Duration::from_secs(1),
};
/// Retries of one placing at most, budget allowing.
const RETRIES: u32 = 8;

/// Whether Orders refused the call at the door (overloaded, or not serving for a moment)
/// rather than answering it.
pub(super) fn refused(status: &Status) -> bool {
    matches!(status.code(), Code::ResourceExhausted | Code::Unavailable)
}

/// The retries every order of a step may still make: a tenth of the placings of the last
/// 10 s, plus one a second.
pub(super) fn retry_budget() -> TpsBudget {
    TpsBudget::new(Duration::from_secs(10), 1, 0.1)
}

/// Runs `call` until it is not refused at the door, [`RETRIES`] retries are spent or the
/// budget says stop, waiting [`BACKOFF`] between tries; returns the last answer and how many
/// tries were refused. The order's first call pays into `budget`, each retry draws on it.
pub(super) async fn retried<T, F, Fut>(
    budget: &impl Budget,
    mut call: F,
) -> (Result<T, Status>, u32)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    budget.deposit();
    let mut refusals = 0;
    loop {
        match call().await {
            Err(status) if refused(&status) => {
                refusals += 1;
                if refusals > RETRIES || !budget.withdraw() {
                    return (Err(status), refusals);
                }
                tokio::time::sleep(BACKOFF.jittered(refusals)).await;
            }
            answer => return (answer, refusals),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A call refused at the door `refused` times, then answered with `then`.
    fn door(
        refused: u32,
        then: Result<u32, Status>,
    ) -> impl FnMut() -> std::future::Ready<Result<u32, Status>> {
        let calls = AtomicU32::new(0);
        move || {
            let call = calls.fetch_add(1, Ordering::Relaxed);
            std::future::ready(if call < refused {
                Err(Status::resource_exhausted(
                    "Too many active requests for the connection",
                ))
            } else {
                then.clone()
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_placing_refused_at_the_door_is_retried_and_counted() {
        let started = tokio::time::Instant::now();
        let (answer, refusals) = retried(&retry_budget(), door(3, Ok(7))).await;
        assert_eq!(answer.ok(), Some(7));
        assert_eq!(refusals, 3);
        // Three jittered waits, each at most its ceiling (25 + 50 + 100 ms).
        assert!(started.elapsed() <= Duration::from_millis(175));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_is_not_a_refusal_is_not_retried() {
        let budget = retry_budget();
        let invalid = Err(Status::invalid_argument("no lines"));
        let (answer, refusals) = retried(&budget, door(0, invalid)).await;
        assert_eq!(answer.map_err(|s| s.code()), Err(Code::InvalidArgument));
        assert_eq!(refusals, 0);
        let (answer, refusals) = retried(&budget, door(1, Err(Status::internal("boom")))).await;
        assert_eq!(answer.map_err(|s| s.code()), Err(Code::Internal));
        assert_eq!(refusals, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_door_that_stays_shut_refuses_the_placing_after_the_last_retry() {
        let (answer, refusals) = retried(&retry_budget(), door(u32::MAX, Ok(7))).await;
        assert_eq!(answer.map_err(|s| s.code()), Err(Code::ResourceExhausted));
        assert_eq!(refusals, RETRIES + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn under_sustained_refusals_retries_stop_at_the_budget() {
        let budget = retry_budget();
        // 100 orders refused for good: the first spend the budget (ten retries of the
        // reserve, ten paid by the orders' first calls), then every refusal is final at once.
        let mut calls = 0;
        for _ in 0..100 {
            let (answer, refusals) = retried(&budget, door(u32::MAX, Ok(7))).await;
            assert!(answer.is_err());
            calls += refusals;
        }
        // About twenty retries, then one call an order.
        assert!(calls <= 150, "{calls} calls for 100 orders");
        let (answer, refusals) = retried(&budget, door(1, Ok(7))).await;
        assert_eq!(
            (answer.is_err(), refusals),
            (true, 1),
            "no retry while the budget is spent"
        );
        // Placings earn it back: ten placings a retry.
        for _ in 0..600 {
            let _ = retried(&budget, door(0, Ok(7))).await;
        }
        let (answer, refusals) = retried(&budget, door(1, Ok(7))).await;
        assert_eq!((answer.ok(), refusals), (Some(7), 1));
    }
}
