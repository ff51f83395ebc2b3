//! When a failed send is tried again: exponential backoff with full jitter, capped
//! (`delay = random(0, min(cap, base × 2^(failures−1)))`, the AWS "full jitter" schedule).
//! Jitter spreads the retries of a batch that failed together (a broker outage) so they do not
//! return as one herd; the cap and the default base make the default budget span tens of
//! minutes, so an outage does not burn through the budget in seconds.

use std::time::Duration;

use rand::Rng;

/// How retry delays are randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Jitter {
    /// Uniform in `[0, ceiling]` (production).
    #[default]
    Full,
    /// Exactly the ceiling: a deterministic schedule, for tests and for reading the schedule.
    None,
}

/// The retry schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Ceiling of the first retry's delay.
    pub base: Duration,
    /// Largest delay.
    pub cap: Duration,
    /// Randomisation.
    pub jitter: Jitter,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(5),
            cap: Duration::from_secs(600),
            jitter: Jitter::Full,
        }
    }
}

impl BackoffPolicy {
    /// The largest delay after the `failures`-th consecutive failure (1-based).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(62);
        let factor = 1u64 << doublings;
        let base_ms = u64::try_from(self.base.as_millis()).unwrap_or(u64::MAX);
        let cap_ms = u64::try_from(self.cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(base_ms.saturating_mul(factor).min(cap_ms))
    }

    /// The delay before the next try after the `failures`-th consecutive failure.
    pub fn delay(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(failures);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => {
                let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
                Duration::from_millis(rng.random_range(0..=ceiling_ms))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let policy = BackoffPolicy::default();
        let ceilings: Vec<u64> = (1..=9).map(|n| policy.ceiling(n).as_secs()).collect();
        assert_eq!(ceilings, [5, 10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(policy.ceiling(u32::MAX), Duration::from_secs(600));
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling_and_spreads() {
        let policy = BackoffPolicy::default();
        let mut rng = rand::rng();
        let delays: Vec<Duration> = (0..200).map(|_| policy.delay(4, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(40)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 50, "jitter should spread the delays");
    }

    #[test]
    fn default_schedule_spans_minutes() {
        // Twelve attempts (the default budget): even the expected total (half the ceilings)
        // is well over ten minutes.
        let policy = BackoffPolicy::default();
        let total: Duration = (1..12).map(|n| policy.ceiling(n)).sum();
        assert!(total / 2 > Duration::from_secs(600), "{total:?}");
    }

    #[test]
    fn no_jitter_is_the_ceiling() {
        let policy = BackoffPolicy {
            jitter: Jitter::None,
            ..BackoffPolicy::default()
        };
        assert_eq!(policy.delay(3, &mut rand::rng()), Duration::from_secs(20));
    }
}
