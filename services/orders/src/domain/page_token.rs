//! `ListOrders` page tokens: an opaque encoding of where the previous page ended (placed time
//! and id of its last order, newest-first order) bound to the customer it was issued for.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::InvalidField;

/// Where a page ends: the next page starts strictly after this (placed_at, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCursor {
    /// Placed time of the last order on the previous page.
    pub placed_at: DateTime<Utc>,
    /// Id of that order (breaks ties between equal times).
    pub id: Uuid,
}

/// Encodes `cursor` for `customer_id`.
pub fn encode(customer_id: &str, cursor: PageCursor) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "v1|{}|{}|{customer_id}",
        cursor.placed_at.timestamp_micros(),
        cursor.id
    ))
}

/// Decodes a token issued by [`encode`] for the same `customer_id`.
pub fn decode(customer_id: &str, token: &str) -> Result<PageCursor, InvalidField> {
    let invalid = || {
        InvalidField::new(
            "page_token",
            "is not a token from a previous ListOrders response for this customer_id",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.splitn(4, '|');
    let (Some("v1"), Some(micros), Some(id), Some(customer)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    if customer != customer_id {
        return Err(invalid());
    }
    let micros: i64 = micros.parse().map_err(|_| invalid())?;
    Ok(PageCursor {
        placed_at: DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?,
        id: Uuid::parse_str(id).map_err(|_| invalid())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_for_the_same_customer_only() {
        let cursor = PageCursor {
            placed_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("valid"),
            id: Uuid::now_v7(),
        };
        let token = encode("c|1", cursor);
        assert_eq!(decode("c|1", &token), Ok(cursor));
        assert_eq!(
            decode("c-2", &token).expect_err("other customer").field,
            "page_token"
        );
    }

    #[test]
    fn garbage_is_an_invalid_field() {
        for token in ["", "!!!", "djE", &URL_SAFE_NO_PAD.encode("v1|x|y|c")] {
            assert_eq!(
                decode("c", token).expect_err("garbage").field,
                "page_token",
                "{token}"
            );
        }
    }
}
