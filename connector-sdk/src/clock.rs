//! The time source. The SDK takes `now` from a [`Clock`] instead of the operating system, so
//! that its decisions in time — when a report is due again, the window of a report token, the
//! time stamps the inbox keeps, retention, the placed → answered latency — are tested by moving
//! a [`ManualClock`]. Set one with
//! [`ConnectorBuilder::clock`](crate::ConnectorBuilder::clock); the default is the
//! [`SystemClock`]. (Waiting itself — a backoff's sleep, the poll thread's intervals — is left
//! to tokio's and the OS's timers: a test pauses tokio's time for that.)

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};

/// Where the connector gets the current time from.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current time, truncated to microseconds (what the inbox keeps exactly).
    fn now(&self) -> DateTime<Utc>;
}

/// A shareable clock.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock: the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        micros(Utc::now())
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Arc::new(Mutex::new(micros(start))),
        }
    }

    /// Moves the clock by `by` (back, when negative).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now = micros(*now + by);
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = micros(to);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `at` without its sub-microsecond part, so that it survives the inbox unchanged.
fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let start = DateTime::from_timestamp(1_800_000_000, 123_456_789).expect("valid");
        let clock = ManualClock::new(start);
        let at = DateTime::from_timestamp(1_800_000_000, 123_456_000).expect("valid");
        assert_eq!(clock.now(), at, "microseconds kept");
        assert_eq!(clock.now(), at, "still");
        clock.advance(Duration::seconds(90));
        assert_eq!(clock.now(), at + Duration::seconds(90));
        clock.set(start - Duration::days(1));
        assert_eq!(clock.now(), at - Duration::days(1));
    }

    #[test]
    fn the_system_clock_keeps_microseconds_only() {
        assert_eq!(SystemClock.now().timestamp_subsec_nanos() % 1_000, 0);
    }
}
