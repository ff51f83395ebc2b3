//! `ListOrders` page tokens: where the previous page ended (placed time and id of its last
//! order, newest-first order), sealed with the server's key and bound to the customer it was
//! issued for (see `waybill_service_kit::page_token`). A forged or altered token, or one issued
//! for another customer or by a server with another key, is refused as `page_token` before any
//! of its fields is used; the decoded time is bounded as well, so even a token sealed with a
//! leaked key cannot carry a time the stores cannot represent.

use chrono::{DateTime, Utc};
use uuid::Uuid;
use waybill_service_kit::page_token::PageTokenKey;

use super::InvalidField;

/// What a token is for: a token of another RPC (or an older format) does not open as this one.
const PURPOSE: &str = "waybill.orders.ListOrders.v2";
/// Payload: placed time (micros since the epoch, big-endian i64) then the order id.
const PAYLOAD_BYTES: usize = 8 + 16;
/// Earliest and latest placed time a cursor may carry (1970-01-01 to 9999-12-31): inside what
/// both Postgres `timestamptz` and SQLite's text timestamps represent and compare correctly.
pub const MIN_MICROS: i64 = 0;
/// See [`MIN_MICROS`].
pub const MAX_MICROS: i64 = 253_402_300_799_999_999;

/// Where a page ends: the next page starts strictly after this (placed_at, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCursor {
    /// Placed time of the last order on the previous page.
    pub placed_at: DateTime<Utc>,
    /// Id of that order (breaks ties between equal times).
    pub id: Uuid,
}

/// Seals `cursor` for `customer_id`.
pub fn encode(key: &PageTokenKey, customer_id: &str, cursor: PageCursor) -> String {
    let mut payload = Vec::with_capacity(PAYLOAD_BYTES);
    payload.extend_from_slice(&cursor.placed_at.timestamp_micros().to_be_bytes());
    payload.extend_from_slice(cursor.id.as_bytes());
    key.seal(PURPOSE, customer_id.as_bytes(), &payload)
}

/// Opens a token issued by [`encode`] with the same key for the same `customer_id`.
pub fn decode(
    key: &PageTokenKey,
    customer_id: &str,
    token: &str,
) -> Result<PageCursor, InvalidField> {
    let invalid = || {
        InvalidField::new(
            "page_token",
            "is not a token from a previous ListOrders response for this customer_id; pass next_page_token unchanged",
        )
    };
    let payload = key
        .open(PURPOSE, customer_id.as_bytes(), token)
        .ok_or_else(invalid)?;
    let (micros, id) = payload
        .split_first_chunk::<8>()
        .filter(|(_, id)| id.len() == 16)
        .ok_or_else(invalid)?;
    let micros = i64::from_be_bytes(*micros);
    if !(MIN_MICROS..=MAX_MICROS).contains(&micros) {
        return Err(invalid());
    }
    Ok(PageCursor {
        placed_at: DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?,
        id: Uuid::from_slice(id).map_err(|_| invalid())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PageTokenKey {
        PageTokenKey::from_bytes(&[42; 32]).expect("key")
    }

    fn cursor(micros: i64) -> PageCursor {
        PageCursor {
            placed_at: DateTime::from_timestamp_micros(micros).expect("valid"),
            id: Uuid::now_v7(),
        }
    }

    #[test]
    fn round_trips_for_the_same_customer_and_key_only() {
        let cursor = cursor(1_700_000_000_123_456);
        let token = encode(&key(), "c|1", cursor);
        assert_eq!(decode(&key(), "c|1", &token), Ok(cursor));
        assert_eq!(
            decode(&key(), "c-2", &token)
                .expect_err("other customer")
                .field,
            "page_token"
        );
        let other = PageTokenKey::from_bytes(&[7; 32]).expect("key");
        assert!(decode(&other, "c|1", &token).is_err(), "another server key");
    }

    #[test]
    fn garbage_and_the_old_unsigned_format_are_invalid_fields() {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        let old = URL_SAFE_NO_PAD.encode(format!("v1|1|{}|c", Uuid::now_v7()));
        for token in ["", "!!!", "djE", &old] {
            assert_eq!(
                decode(&key(), "c", token).expect_err("garbage").field,
                "page_token",
                "{token}"
            );
        }
    }

    #[test]
    fn times_outside_what_the_stores_represent_are_refused_even_when_sealed() {
        // Only a holder of the key could make these; bound them anyway.
        for micros in [i64::MIN, -1, MAX_MICROS + 1, i64::MAX] {
            let mut payload = micros.to_be_bytes().to_vec();
            payload.extend_from_slice(Uuid::now_v7().as_bytes());
            let token = key().seal(PURPOSE, b"c", &payload);
            assert!(decode(&key(), "c", &token).is_err(), "{micros}");
        }
        let edge = cursor(MAX_MICROS);
        assert_eq!(decode(&key(), "c", &encode(&key(), "c", edge)), Ok(edge));
    }
}
