//! Conversions between `google.protobuf.Timestamp`/`Duration` and `chrono`.

use chrono::{DateTime, Utc};

/// A protobuf timestamp for a UTC time.
pub fn to_timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        // Always in 0..1_000_000_000 for a valid `DateTime`.
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// The UTC time of a protobuf timestamp; `None` when it is out of range or its nanos are invalid.
pub fn from_timestamp(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(ts.nanos).ok()?;
    DateTime::from_timestamp(ts.seconds, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_microseconds() {
        let at = DateTime::from_timestamp(1_700_000_000, 123_456_000).expect("valid");
        assert_eq!(from_timestamp(&to_timestamp(at)), Some(at));
    }

    #[test]
    fn refuses_negative_nanos() {
        let ts = prost_types::Timestamp {
            seconds: 1,
            nanos: -1,
        };
        assert_eq!(from_timestamp(&ts), None);
    }
}
