//! Pure decisions, without I/O: what the worker does with a record ([`order`]), what the report
//! sender does with a report ([`report`]), which offset is safe to commit and which record runs
//! next in a partition ([`ledger`]), when a partition pauses and resumes and when offsets are
//! committed ([`partition`]), how long to wait before retrying ([`backoff`]), and whether
//! a StatusIngest answer is worth retrying ([`report_outcome`]). Each is unit-tested here, time
//! from a [`ManualClock`](crate::clock::ManualClock); the consumer, the worker and the report
//! sender only gather inputs and carry out the result.

pub mod backoff;
pub mod ledger;
pub mod order;
pub mod partition;
pub mod report;
pub mod report_outcome;

/// The clock the decisions' tests stand on: 2026-11-22 12:00 UTC, moved only by the test.
#[cfg(test)]
pub(crate) fn test_clock() -> crate::clock::ManualClock {
    use chrono::TimeZone as _;
    crate::clock::ManualClock::new(
        chrono::Utc
            .with_ymd_and_hms(2026, 11, 22, 12, 0, 0)
            .single()
            .expect("a valid instant"),
    )
}
