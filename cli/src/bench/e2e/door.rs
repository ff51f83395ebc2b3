//! A placing Orders refuses at the door, retried as a well-behaved storefront would.
//!
//! An overloaded Orders sheds calls past its per-connection concurrency limit with
//! `RESOURCE_EXHAUSTED` (tonic's "Too many active requests for the connection"), and answers
//! `UNAVAILABLE` while it is not serving; neither call did anything, so repeating it under the
//! same idempotency key is safe. Each order retries with jittered exponential backoff, and all
//! orders share a retry budget shaped like gRPC's retry throttling (`maxTokens` 100,
//! `tokenRatio` 0.1): a refusal spends a token, a placing earns a tenth of one, and retries
//! stop while fewer than half the tokens are left. Without the budget, retries under a
//! sustained overload multiply the calls (seen: 1.6 million refused calls for 264,000 orders at
//! 2,200/s, and Orders never caught up); with it they add at most a tenth.

use std::{future::Future, sync::Mutex, time::Duration};

use tonic::{Code, Status};
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

/// The retries every order of a step may still make (gRPC's retry throttling).
#[derive(Debug)]
pub(super) struct RetryBudget {
    tokens: Mutex<f64>,
}

impl RetryBudget {
    const MAX_TOKENS: f64 = 100.0;
    const TOKEN_RATIO: f64 = 0.1;

    fn placed(&self) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        *tokens = (*tokens + Self::TOKEN_RATIO).min(Self::MAX_TOKENS);
    }

    /// Spends a token for a refusal; whether a retry is still allowed.
    fn may_retry(&self) -> bool {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        *tokens = (*tokens - 1.0).max(0.0);
        *tokens > Self::MAX_TOKENS / 2.0
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            tokens: Mutex::new(Self::MAX_TOKENS),
        }
    }
}

/// Runs `call` until it is not refused at the door, [`RETRIES`] retries are spent or the
/// budget says stop, waiting [`BACKOFF`] between tries; returns the last answer and how many
/// tries were refused.
pub(super) async fn retried<T, F, Fut>(
    budget: &RetryBudget,
    mut call: F,
) -> (Result<T, Status>, u32)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut refusals = 0;
    loop {
        match call().await {
            Err(status) if refused(&status) => {
                refusals += 1;
                if refusals > RETRIES || !budget.may_retry() {
                    return (Err(status), refusals);
                }
                tokio::time::sleep(BACKOFF.jittered(refusals)).await;
            }
            answer => {
                if answer.is_ok() {
                    budget.placed();
                }
                return (answer, refusals);
            }
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
        let (answer, refusals) = retried(&RetryBudget::default(), door(3, Ok(7))).await;
        assert_eq!(answer.ok(), Some(7));
        assert_eq!(refusals, 3);
        // Three jittered waits, each at most its ceiling (25 + 50 + 100 ms).
        assert!(started.elapsed() <= Duration::from_millis(175));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_is_not_a_refusal_is_not_retried() {
        let budget = RetryBudget::default();
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
        let (answer, refusals) = retried(&RetryBudget::default(), door(u32::MAX, Ok(7))).await;
        assert_eq!(answer.map_err(|s| s.code()), Err(Code::ResourceExhausted));
        assert_eq!(refusals, RETRIES + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn under_sustained_refusals_retries_stop_at_the_budget() {
        let budget = RetryBudget::default();
        // 100 orders refused for good: the first spend the budget down to half, then every
        // refusal is final at once.
        let mut calls = 0;
        for _ in 0..100 {
            let (answer, refusals) = retried(&budget, door(u32::MAX, Ok(7))).await;
            assert!(answer.is_err());
            calls += refusals;
        }
        // 50 tokens spent on retries (each refusal costs one), then one call an order.
        assert!(calls <= 150, "{calls} calls for 100 orders");
        let (answer, refusals) = retried(&budget, door(1, Ok(7))).await;
        assert_eq!(
            (answer.is_err(), refusals),
            (true, 1),
            "no retry while the budget is spent"
        );
        // Placings earn it back: 10 placings a token; past half the tokens retries resume.
        for _ in 0..600 {
            let _ = retried(&budget, door(0, Ok(7))).await;
        }
        let (answer, refusals) = retried(&budget, door(1, Ok(7))).await;
        assert_eq!((answer.ok(), refusals), (Some(7), 1));
    }
}
