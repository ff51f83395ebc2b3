//! The checks of `DispatchAdmin` requests, before anything is touched (so a bad request
//! changes nothing): each refusal is an [`InvalidField`] naming the field and its rule, shown to
//! the operator as `"<field>: <rule>"`. Pure functions over the request messages; the handlers
//! in `grpc/` call them first.
//!
//! Caller input appears in a rule only through [`quote`] (escaped, bounded), and every free
//! text field is checked by the kit's one rule (bounded, no control characters: Postgres cannot
//! store a NUL, SQLite can, and neither may differ from the other).

use std::time::Duration;

use uuid::Uuid;
use waybill_proto::v1::{self, DispatchState};
pub use waybill_service_kit::text::InvalidField;
use waybill_service_kit::text::{TextKind, check_text, is_partner_id, quote};

use crate::domain::{
    cycle::replay::{DEFAULT_MAX_ORDERS, MAX_ORDERS_CEILING, ReplayBounds, max_spread},
    model::DispatchFilter,
};

/// Most order ids one `RetryDispatches` may name.
pub const MAX_RETRY_IDS: usize = 1_000;
/// Handover deadline of a partner enrolled without one.
pub const DEFAULT_HANDOVER_DEADLINE: Duration = Duration::from_secs(600);
/// Longest handover deadline a partner may have.
pub const MAX_HANDOVER_DEADLINE: Duration = Duration::from_secs(30 * 86_400);
/// Re-sends of an unconfirmed order for a partner enrolled without a budget: with the default
/// deadline, about an hour of re-sends, so an order a broker lost still reaches the partner.
pub const DEFAULT_RESEND_BUDGET: i32 = 5;
/// Length of an Ed25519 public key in its raw form.
pub const PUBLIC_KEY_BYTES: usize = 32;

/// An order id field: a UUID (surrounding blanks ignored).
pub fn order_id(field: &str, text: &str) -> Result<Uuid, InvalidField> {
    Uuid::parse_str(text.trim())
        .map_err(|_| InvalidField::new(field, format!("{} is not a UUID", quote(text))))
}

/// A free-text field: at most `max_chars` characters, one line.
pub fn text(field: &str, value: &str, max_chars: usize) -> Result<(), InvalidField> {
    check_text(field, value, max_chars, TextKind::Line)
}

/// The free-text fields of an address (ExplainRoute), bounded as Orders bounds them; the
/// country code is required.
pub fn address(address: &v1::Address) -> Result<(), InvalidField> {
    text("address.line1", &address.line1, 200)?;
    text("address.line2", &address.line2, 200)?;
    text("address.city", &address.city, 100)?;
    text("address.region", &address.region, 100)?;
    text("address.postal_code", &address.postal_code, 20)?;
    text("address.country_code", &address.country_code, 2)?;
    if address.country_code.trim().is_empty() {
        return Err(InvalidField::new("address.country_code", "is required"));
    }
    Ok(())
}

/// A partner id: 1-63 lower-case letters, digits or `-`, not starting with `-` (it names a
/// Kafka topic).
pub fn partner_id(field: &str, id: &str) -> Result<(), InvalidField> {
    if is_partner_id(id) {
        Ok(())
    } else {
        Err(InvalidField::new(
            field,
            format!(
                "{} must be 1-63 lower-case letters, digits or '-', not starting with '-'",
                quote(id)
            ),
        ))
    }
}

/// A route or key id: 1-64 letters, digits, `-`, `_` or `.`.
pub fn name(field: &str, value: &str) -> Result<(), InvalidField> {
    let valid = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(InvalidField::new(
            field,
            format!(
                "{} must be 1-64 letters, digits, '-', '_' or '.'",
                quote(value)
            ),
        ))
    }
}

/// The dispatch filter of `ListDispatches` and `RetryDispatches` (absent: everything).
pub fn filter(filter: Option<v1::DispatchFilter>) -> Result<DispatchFilter, InvalidField> {
    let filter = filter.unwrap_or_default();
    text("filter.partner_id", &filter.partner_id, 63)?;
    let state = match DispatchState::try_from(filter.state) {
        Ok(DispatchState::Unspecified) => None,
        Ok(state) => Some(state),
        Err(_) => {
            return Err(InvalidField::new(
                "filter.state",
                format!("unknown dispatch state {}", filter.state),
            ));
        }
    };
    Ok(DispatchFilter {
        state,
        partner_id: Some(filter.partner_id.trim().to_owned()).filter(|p| !p.is_empty()),
    })
}

/// A `ListDispatches` page token: the last order id of the previous page, or empty for the
/// first page.
///
/// It is in the clear: it needs no authentication because it grants nothing (any UUID is a
/// valid position in a list the operator may read in full; a forged one only skips rows) and
/// it decodes to a UUID or is refused, so no unbounded value reaches a store.
pub fn page_token(token: &str) -> Result<Option<Uuid>, InvalidField> {
    match token.trim() {
        "" => Ok(None),
        token => Uuid::parse_str(token).map(Some).map_err(|_| {
            InvalidField::new(
                "page_token",
                "is not one this service issued; pass next_page_token unchanged",
            )
        }),
    }
}

/// What a `RetryDispatches` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetrySelection {
    /// These orders (each must then be retryable and not leased).
    Orders(Vec<Uuid>),
    /// Every order the filter matches; its state is one of the retryable ones.
    Matching(DispatchFilter),
}

/// Which dispatches a `RetryDispatches` means: the named order ids, or else a filter that names
/// a state in `retryable`.
pub fn retry_selection(
    request: v1::RetryDispatchesRequest,
    retryable: &[DispatchState],
) -> Result<RetrySelection, InvalidField> {
    if request.order_ids.is_empty() {
        let filter = filter(request.filter)?;
        return match filter.state {
            Some(state) if retryable.contains(&state) => Ok(RetrySelection::Matching(filter)),
            Some(state) => Err(InvalidField::new(
                "filter.state",
                format!(
                    "{} cannot be retried; name one of {}",
                    state.short_name(),
                    state_names(retryable)
                ),
            )),
            None => Err(InvalidField::new(
                "filter.state",
                "is required without order_ids: name order_ids, or a filter with a state \
                 (e.g. DEAD)",
            )),
        };
    }
    if request.order_ids.len() > MAX_RETRY_IDS {
        return Err(InvalidField::new(
            "order_ids",
            format!(
                "at most {MAX_RETRY_IDS} order ids per call, got {}",
                request.order_ids.len()
            ),
        ));
    }
    request
        .order_ids
        .iter()
        .enumerate()
        .map(|(i, id)| order_id(&format!("order_ids[{i}]"), id))
        .collect::<Result<_, _>>()
        .map(RetrySelection::Orders)
}

/// A `RetryDispatches`' cap and spread: `max_orders` 1 to [`MAX_ORDERS_CEILING`] (unset:
/// [`DEFAULT_MAX_ORDERS`]), `spread` zero to [`max_spread`] (unset: zero). Named order ids must
/// fit under the cap (a request naming more is refused, not cut: which ones to leave out is
/// the operator's call); a filter matching more is truncated, and the answer says so.
pub fn replay_bounds(
    max_orders: Option<i32>,
    spread: Option<prost_types::Duration>,
    named_orders: usize,
) -> Result<ReplayBounds, InvalidField> {
    let max_orders = match max_orders {
        None => DEFAULT_MAX_ORDERS,
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_ORDERS_CEILING).contains(n))
            .ok_or_else(|| {
                InvalidField::new(
                    "max_orders",
                    format!("must be between 1 and {MAX_ORDERS_CEILING}, got {n}"),
                )
            })?,
    };
    if named_orders > max_orders as usize {
        return Err(InvalidField::new(
            "order_ids",
            format!(
                "names {named_orders} orders, more than max_orders ({max_orders}): name fewer, \
                 or raise max_orders"
            ),
        ));
    }
    let spread = match spread {
        None => chrono::Duration::zero(),
        Some(d) if d.seconds < 0 || d.nanos < 0 => {
            return Err(InvalidField::new("spread", "must not be negative"));
        }
        Some(d) => {
            chrono::Duration::seconds(d.seconds.min(i64::from(u32::MAX)))
                + chrono::Duration::nanoseconds(i64::from(d.nanos))
        }
    };
    if spread > max_spread() {
        return Err(InvalidField::new("spread", "must be at most 24h"));
    }
    Ok(ReplayBounds { max_orders, spread })
}

/// `PENDING, DEAD, …`: states as an operator writes them.
pub fn state_names(states: &[DispatchState]) -> String {
    states
        .iter()
        .map(|state| state.short_name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A partner's handover deadline: positive, at most [`MAX_HANDOVER_DEADLINE`]; absent means
/// [`DEFAULT_HANDOVER_DEADLINE`].
pub fn handover_deadline(
    deadline: Option<prost_types::Duration>,
) -> Result<chrono::Duration, InvalidField> {
    const FIELD: &str = "partner.handover_deadline";
    let deadline = match deadline {
        None => DEFAULT_HANDOVER_DEADLINE,
        Some(d) if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) => {
            return Err(InvalidField::new(FIELD, "must be positive"));
        }
        Some(d) => Duration::new(
            u64::try_from(d.seconds).unwrap_or(u64::MAX),
            u32::try_from(d.nanos).unwrap_or(0),
        ),
    };
    if deadline > MAX_HANDOVER_DEADLINE {
        return Err(InvalidField::new(FIELD, "must be at most 30 days"));
    }
    chrono::Duration::from_std(deadline).map_err(|_| InvalidField::new(FIELD, "is too long"))
}

/// A partner's re-send budget: 0 to 100; absent means [`DEFAULT_RESEND_BUDGET`].
pub fn resend_budget(budget: Option<i32>) -> Result<i32, InvalidField> {
    let budget = budget.unwrap_or(DEFAULT_RESEND_BUDGET);
    if (0..=100).contains(&budget) {
        Ok(budget)
    } else {
        Err(InvalidField::new(
            "partner.resend_budget",
            format!("must be between 0 and 100, got {budget}"),
        ))
    }
}

/// A route's country: an ISO 3166-1 alpha-2 code, upper-cased.
pub fn country_code(field: &str, code: &str) -> Result<String, InvalidField> {
    let upper = code.trim().to_ascii_uppercase();
    if upper.len() == 2 && upper.chars().all(|c| c.is_ascii_uppercase()) {
        Ok(upper)
    } else {
        Err(InvalidField::new(
            field,
            format!(
                "{} must be an ISO 3166-1 alpha-2 code such as DE",
                quote(code)
            ),
        ))
    }
}

/// A partner's public key: the raw 32-byte Ed25519 key.
pub fn public_key(key: &[u8]) -> Result<(), InvalidField> {
    if key.len() == PUBLIC_KEY_BYTES {
        Ok(())
    } else {
        Err(InvalidField::new(
            "public_key",
            format!(
                "must be the raw {PUBLIC_KEY_BYTES}-byte Ed25519 key, got {} bytes",
                key.len()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRYABLE: [DispatchState; 2] = [DispatchState::Dead, DispatchState::Retrying];

    #[test]
    fn order_ids_name_their_field_and_quote_the_value() {
        let error = order_id("order_id", "nope\0").expect_err("not a uuid");
        assert_eq!(error.to_string(), "order_id: \"nope\\0\" is not a UUID");
        let id = Uuid::now_v7();
        assert_eq!(order_id("order_id", &format!(" {id} ")), Ok(id));
    }

    #[test]
    fn partner_ids_are_topic_safe() {
        assert!(partner_id("partner.id", "acme-2").is_ok());
        for bad in ["", "-acme", "Acme", "a_b", &"a".repeat(64)] {
            let error = partner_id("partner.id", bad).expect_err(bad);
            assert_eq!(error.field, "partner.id");
        }
    }

    #[test]
    fn names_allow_dots_and_underscores() {
        assert!(name("route_id", "eu.de_1-a").is_ok());
        assert_eq!(name("key_id", "a b").expect_err("space").field, "key_id");
    }

    #[test]
    fn a_retry_names_orders_or_a_retryable_state() {
        let id = Uuid::now_v7();
        let by_id = v1::RetryDispatchesRequest {
            order_ids: vec![id.to_string()],
            ..Default::default()
        };
        assert_eq!(
            retry_selection(by_id, &RETRYABLE),
            Ok(RetrySelection::Orders(vec![id]))
        );
        let by_state = |state: DispatchState| v1::RetryDispatchesRequest {
            filter: Some(v1::DispatchFilter {
                state: state.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(
            retry_selection(by_state(DispatchState::Dead), &RETRYABLE),
            Ok(RetrySelection::Matching(_))
        ));
        let error =
            retry_selection(by_state(DispatchState::Sent), &RETRYABLE).expect_err("not retryable");
        assert_eq!(
            error.to_string(),
            "filter.state: SENT cannot be retried; name one of DEAD, RETRYING"
        );
        let error = retry_selection(v1::RetryDispatchesRequest::default(), &RETRYABLE)
            .expect_err("nothing named");
        assert_eq!(error.field, "filter.state");
        let error = retry_selection(
            v1::RetryDispatchesRequest {
                order_ids: vec![id.to_string(), "x".into()],
                ..Default::default()
            },
            &RETRYABLE,
        )
        .expect_err("second id malformed");
        assert_eq!(error.field, "order_ids[1]");
        let error = retry_selection(
            v1::RetryDispatchesRequest {
                order_ids: vec![id.to_string(); MAX_RETRY_IDS + 1],
                ..Default::default()
            },
            &RETRYABLE,
        )
        .expect_err("too many");
        assert_eq!(error.field, "order_ids");
    }

    #[test]
    fn a_replay_is_capped_and_spread_within_bounds() {
        let secs = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
        assert_eq!(replay_bounds(None, None, 0), Ok(ReplayBounds::default()));
        assert_eq!(
            replay_bounds(Some(10), secs(600), 10),
            Ok(ReplayBounds {
                max_orders: 10,
                spread: chrono::Duration::minutes(10)
            })
        );
        for (cap, spread, named, field) in [
            (Some(-1), None, 0, "max_orders"),
            (Some(0), None, 0, "max_orders"),
            (Some(10_001), None, 0, "max_orders"),
            (Some(2), None, 3, "order_ids"),
            (None, None, 1_001, "order_ids"),
            (None, secs(-1), 0, "spread"),
            (None, secs(86_401), 0, "spread"),
        ] {
            let error = replay_bounds(cap, spread, named).expect_err(field);
            assert_eq!(error.field, field, "{error}");
        }
        assert_eq!(
            replay_bounds(Some(-5), None, 0)
                .expect_err("negative")
                .to_string(),
            "max_orders: must be between 1 and 10000, got -5"
        );
    }

    #[test]
    fn unknown_filter_states_are_refused() {
        let error = filter(Some(v1::DispatchFilter {
            state: 99,
            ..Default::default()
        }))
        .expect_err("unknown");
        assert_eq!(error.to_string(), "filter.state: unknown dispatch state 99");
    }

    #[test]
    fn page_tokens_are_uuids() {
        assert_eq!(page_token(""), Ok(None));
        let id = Uuid::now_v7();
        assert_eq!(page_token(&id.to_string()), Ok(Some(id)));
        assert_eq!(page_token("\0").expect_err("garbage").field, "page_token");
    }

    #[test]
    fn handover_deadlines_are_positive_and_bounded() {
        assert_eq!(handover_deadline(None), Ok(chrono::Duration::seconds(600)));
        let secs = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
        assert_eq!(
            handover_deadline(secs(30)),
            Ok(chrono::Duration::seconds(30))
        );
        for bad in [0, -1, 30 * 86_400 + 1] {
            let error = handover_deadline(secs(bad)).expect_err("out of range");
            assert_eq!(error.field, "partner.handover_deadline");
        }
    }

    #[test]
    fn resend_budgets_are_bounded() {
        assert_eq!(resend_budget(None), Ok(DEFAULT_RESEND_BUDGET));
        assert_eq!(resend_budget(Some(0)), Ok(0));
        assert_eq!(
            resend_budget(Some(101)).expect_err("too many").to_string(),
            "partner.resend_budget: must be between 0 and 100, got 101"
        );
    }

    #[test]
    fn country_codes_are_upper_cased_alpha_2() {
        assert_eq!(
            country_code("route.country_code", " de "),
            Ok("DE".to_owned())
        );
        for bad in ["D", "DEU", "D1", ""] {
            assert!(country_code("route.country_code", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn public_keys_are_32_bytes() {
        assert!(public_key(&[0; 32]).is_ok());
        assert_eq!(
            public_key(&[0; 31]).expect_err("short").to_string(),
            "public_key: must be the raw 32-byte Ed25519 key, got 31 bytes"
        );
    }

    #[test]
    fn addresses_need_a_country() {
        let error = address(&v1::Address {
            city: "Berlin".into(),
            ..Default::default()
        })
        .expect_err("no country");
        assert_eq!(error.to_string(), "address.country_code: is required");
        let error = address(&v1::Address {
            city: "Ber\0lin".into(),
            country_code: "DE".into(),
            ..Default::default()
        })
        .expect_err("nul");
        assert_eq!(error.field, "address.city");
    }
}
