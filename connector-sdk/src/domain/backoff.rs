//! Exponential backoff with full jitter (the AWS "full jitter" scheme): the n-th retry waits a
//! random time in `[0, min(cap, base × 2^(n-1))]`. Jitter spreads the retries of many orders
//! (or many connector instances) that failed together, so they do not hit the partner's
//! system or StatusIngest in lock-step when it comes back.

use std::time::Duration;

use rand::Rng;

/// Base and cap of an exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first retry's wait.
    pub base: Duration,
    /// No wait is longer than this.
    pub cap: Duration,
}

impl Backoff {
    /// The ceiling of the wait before retry number `retry` (1 for the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(31);
        self.base
            .checked_mul(1_u32 << exponent)
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// A random wait in `[0, ceiling(retry)]`, drawn from `rng`.
    pub fn delay(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let ceiling_ms = u64::try_from(self.ceiling(retry).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=ceiling_ms))
    }

    /// [`Backoff::delay`] with the thread's random generator.
    pub fn jittered(&self, retry: u32) -> Duration {
        self.delay(retry, &mut rand::rng())
    }
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(5),
    };

    #[test]
    fn the_ceiling_doubles_up_to_the_cap() {
        assert_eq!(BACKOFF.ceiling(1), Duration::from_millis(100));
        assert_eq!(BACKOFF.ceiling(2), Duration::from_millis(200));
        assert_eq!(BACKOFF.ceiling(4), Duration::from_millis(800));
        assert_eq!(BACKOFF.ceiling(7), Duration::from_secs(5));
        // No overflow however many retries.
        assert_eq!(BACKOFF.ceiling(u32::MAX), Duration::from_secs(5));
        assert_eq!(BACKOFF.ceiling(0), Duration::from_millis(100));
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling() {
        let mut rng = StdRng::seed_from_u64(7);
        let delays: Vec<_> = (0..200).map(|_| BACKOFF.delay(3, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 50, "jitter spreads retries: {distinct:?}");
    }
}
