//! The rules a `PlaceOrderRequest` must meet, and the fields of the other RPCs (order ids,
//! `ListOrders` paging, `WatchOrder`'s position). Each failure names the field and the rule, so
//! a caller can fix the request without reading our code. Nothing is trimmed or rewritten: what
//! is accepted is stored as sent.

use uuid::Uuid;
use waybill_proto::v1::PlaceOrderRequest;
use waybill_service_kit::text::{TextKind, check_required_text, check_text, quote};

use super::{
    InvalidField,
    countries::is_iso3166_alpha2,
    model::{Address, Customer},
};

/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;
/// Most lines in one order.
pub const MAX_LINES: usize = 100;
/// Largest quantity on one line.
pub const MAX_QUANTITY: u32 = 10_000;
/// Longest customer id.
pub const MAX_CUSTOMER_ID_CHARS: usize = 128;
/// Default and largest `ListOrders` page.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest `ListOrders` page.
pub const MAX_PAGE_SIZE: u32 = 100;

/// A requested line that passed validation; not yet priced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedLine {
    /// Catalog SKU (existence is checked when pricing).
    pub sku: String,
    /// 1 to [`MAX_QUANTITY`].
    pub quantity: u32,
}

/// A `PlaceOrderRequest` that meets every rule that needs no database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPlaceOrder {
    /// 1 to 255 characters.
    pub idempotency_key: String,
    /// Who ordered.
    pub customer: Customer,
    /// Where it goes.
    pub ship_to: Address,
    /// 1 to 100 lines, SKUs distinct.
    pub lines: Vec<RequestedLine>,
}

/// Checks every field of `request`; the first broken rule is returned.
pub fn validate_place_order(request: &PlaceOrderRequest) -> Result<ValidPlaceOrder, InvalidField> {
    let key = &request.idempotency_key;
    if key.is_empty() {
        return Err(InvalidField::new(
            "idempotency_key",
            "is required: choose one unique value per intended order and reuse it on retries",
        ));
    }
    text("idempotency_key", key, MAX_IDEMPOTENCY_KEY_CHARS)?;

    let customer = request
        .customer
        .as_ref()
        .ok_or_else(|| InvalidField::new("customer", "is required"))?;
    required_text("customer.id", &customer.id, MAX_CUSTOMER_ID_CHARS)?;
    required_text("customer.name", &customer.name, 200)?;
    required_text("customer.email", &customer.email, 254)?;
    if !looks_like_email(&customer.email) {
        return Err(InvalidField::new(
            "customer.email",
            "must look like name@example.com (one @, a dotted domain, no spaces)",
        ));
    }
    text("customer.phone", &customer.phone, 32)?;
    if !customer
        .phone
        .chars()
        .all(|c| c.is_ascii_digit() || " +-().".contains(c))
    {
        return Err(InvalidField::new(
            "customer.phone",
            "may contain only digits, spaces and + - ( ) .",
        ));
    }

    let address = request
        .shipping_address
        .as_ref()
        .ok_or_else(|| InvalidField::new("shipping_address", "is required"))?;
    required_text("shipping_address.line1", &address.line1, 200)?;
    text("shipping_address.line2", &address.line2, 200)?;
    required_text("shipping_address.city", &address.city, 100)?;
    text("shipping_address.region", &address.region, 100)?;
    text("shipping_address.postal_code", &address.postal_code, 20)?;
    if !is_iso3166_alpha2(&address.country_code) {
        return Err(InvalidField::new(
            "shipping_address.country_code",
            format!(
                "{} is not an ISO 3166-1 alpha-2 code; use two upper-case letters such as \"US\" or \"DE\"",
                quote(&address.country_code)
            ),
        ));
    }

    if request.lines.is_empty() || request.lines.len() > MAX_LINES {
        return Err(InvalidField::new(
            "lines",
            format!(
                "must have 1 to {MAX_LINES} lines, got {}",
                request.lines.len()
            ),
        ));
    }
    let mut lines: Vec<RequestedLine> = Vec::with_capacity(request.lines.len());
    for (index, line) in request.lines.iter().enumerate() {
        let field = format!("lines[{index}]");
        required_text(&format!("{field}.sku"), &line.sku, 64)?;
        if line.quantity == 0 || line.quantity > MAX_QUANTITY {
            return Err(InvalidField::new(
                format!("{field}.quantity"),
                format!("must be 1 to {MAX_QUANTITY}, got {}", line.quantity),
            ));
        }
        if let Some(first) = lines.iter().position(|seen| seen.sku == line.sku) {
            return Err(InvalidField::new(
                format!("{field}.sku"),
                format!(
                    "{} is already on lines[{first}]; put the whole quantity on one line",
                    quote(&line.sku)
                ),
            ));
        }
        lines.push(RequestedLine {
            sku: line.sku.clone(),
            quantity: line.quantity,
        });
    }

    Ok(ValidPlaceOrder {
        idempotency_key: key.clone(),
        customer: Customer {
            id: customer.id.clone(),
            name: customer.name.clone(),
            email: customer.email.clone(),
            phone: customer.phone.clone(),
        },
        ship_to: Address {
            line1: address.line1.clone(),
            line2: address.line2.clone(),
            city: address.city.clone(),
            region: address.region.clone(),
            postal_code: address.postal_code.clone(),
            country_code: address.country_code.clone(),
        },
        lines,
    })
}

/// A non-empty, bounded, single-line text field.
/// An order id field: required, a UUID.
pub fn order_id(field: &str, text: &str) -> Result<Uuid, InvalidField> {
    if text.is_empty() {
        return Err(InvalidField::new(field, "is required"));
    }
    Uuid::parse_str(text).map_err(|_| {
        InvalidField::new(
            field,
            format!(
                "{} is not an order id (a UUID such as 0190f2c4-…)",
                quote(text)
            ),
        )
    })
}

/// `ListOrders`' customer: required, as `PlaceOrder` accepts it.
pub fn customer_id(value: &str) -> Result<(), InvalidField> {
    required_text("customer_id", value, MAX_CUSTOMER_ID_CHARS)
}

/// `ListOrders`' page size: 0 for [`DEFAULT_PAGE_SIZE`], at most [`MAX_PAGE_SIZE`].
pub fn page_size(size: u32) -> Result<u32, InvalidField> {
    page_size_within(size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
}

/// A `page_size` field: 0 for `default`, else at most `max`.
pub fn page_size_within(size: u32, default: u32, max: u32) -> Result<u32, InvalidField> {
    match size {
        0 => Ok(default),
        size if size <= max => Ok(size),
        size => Err(InvalidField::new(
            "page_size",
            format!("must be 0 (default {default}) to {max}, got {size}"),
        )),
    }
}

/// `WatchOrder`'s position: the last event sequence the caller has, 0 for all.
pub fn after_sequence(sequence: i64) -> Result<i64, InvalidField> {
    if sequence < 0 {
        Err(InvalidField::new("after_sequence", "must not be negative"))
    } else {
        Ok(sequence)
    }
}

fn required_text(field: &str, value: &str, max_chars: usize) -> Result<(), InvalidField> {
    check_required_text(field, value, max_chars, TextKind::Line)
}

/// A bounded, single-line text field (empty allowed).
fn text(field: &str, value: &str, max_chars: usize) -> Result<(), InvalidField> {
    check_text(field, value, max_chars, TextKind::Line)
}

/// A deliberately simple shape check (full RFC 5322 validation rejects real addresses and
/// accepts absurd ones): one `@`, a non-empty local part of at most 64 characters, a domain with
/// at least one dot and no empty labels, and no whitespace.
fn looks_like_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.chars().count() <= 64
        && !domain.contains('@')
        && domain.contains('.')
        && domain.split('.').all(|label| !label.is_empty())
        && !email.chars().any(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use waybill_proto::v1::{self as pb};

    use super::*;

    #[test]
    fn order_ids_are_required_uuids() {
        assert_eq!(
            order_id("order_id", "").expect_err("empty").to_string(),
            "order_id: is required"
        );
        let error = order_id("order_id", "42").expect_err("not a uuid");
        assert!(
            error.rule.starts_with("\"42\" is not an order id"),
            "{error}"
        );
        let id = Uuid::now_v7();
        assert_eq!(order_id("order_id", &id.to_string()), Ok(id));
    }

    #[test]
    fn pages_default_and_are_bounded() {
        assert_eq!(page_size(0), Ok(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(MAX_PAGE_SIZE), Ok(MAX_PAGE_SIZE));
        assert_eq!(
            page_size(MAX_PAGE_SIZE + 1).expect_err("too big").field,
            "page_size"
        );
        assert_eq!(
            after_sequence(-1).expect_err("negative").field,
            "after_sequence"
        );
        assert!(customer_id(" ").is_err());
    }

    pub(crate) fn valid_request() -> PlaceOrderRequest {
        PlaceOrderRequest {
            idempotency_key: "key-1".into(),
            customer: Some(pb::Customer {
                id: "c-1".into(),
                name: "Ada Lovelace".into(),
                email: "ada@example.com".into(),
                phone: "+44 20 7946 0000".into(),
            }),
            shipping_address: Some(pb::Address {
                line1: "12 St James's Square".into(),
                line2: String::new(),
                city: "London".into(),
                region: String::new(),
                postal_code: "SW1Y 4JH".into(),
                country_code: "GB".into(),
            }),
            lines: vec![pb::LineItem {
                sku: "MUG-001".into(),
                quantity: 2,
            }],
        }
    }

    fn field_of(request: &PlaceOrderRequest) -> String {
        validate_place_order(request)
            .expect_err("should be invalid")
            .field
    }

    #[test]
    fn accepts_a_valid_request_unchanged() {
        let valid = validate_place_order(&valid_request()).expect("valid");
        assert_eq!(valid.idempotency_key, "key-1");
        assert_eq!(valid.ship_to.country_code, "GB");
        assert_eq!(
            valid.lines,
            vec![RequestedLine {
                sku: "MUG-001".into(),
                quantity: 2
            }]
        );
    }

    #[test]
    fn idempotency_key_is_required_and_bounded() {
        let mut request = valid_request();
        request.idempotency_key.clear();
        assert_eq!(field_of(&request), "idempotency_key");
        request.idempotency_key = "k".repeat(256);
        let error = validate_place_order(&request).expect_err("too long");
        assert_eq!(
            error.to_string(),
            "idempotency_key: must be at most 255 characters, got 256"
        );
        request.idempotency_key = "é".repeat(255);
        assert!(
            validate_place_order(&request).is_ok(),
            "255 characters, not bytes"
        );
    }

    #[test]
    fn customer_and_address_are_required() {
        let mut request = valid_request();
        request.customer = None;
        assert_eq!(field_of(&request), "customer");
        let mut request = valid_request();
        request.shipping_address = None;
        assert_eq!(field_of(&request), "shipping_address");
    }

    #[test]
    fn required_strings_must_not_be_blank() {
        let mut request = valid_request();
        if let Some(c) = request.customer.as_mut() {
            c.id = " ".into();
        }
        assert_eq!(field_of(&request), "customer.id");
        let mut request = valid_request();
        if let Some(c) = request.customer.as_mut() {
            c.name.clear();
        }
        assert_eq!(field_of(&request), "customer.name");
        let mut request = valid_request();
        if let Some(c) = request.customer.as_mut() {
            c.email.clear();
        }
        assert_eq!(field_of(&request), "customer.email");
        let mut request = valid_request();
        if let Some(a) = request.shipping_address.as_mut() {
            a.line1.clear();
        }
        assert_eq!(field_of(&request), "shipping_address.line1");
        let mut request = valid_request();
        if let Some(a) = request.shipping_address.as_mut() {
            a.city.clear();
        }
        assert_eq!(field_of(&request), "shipping_address.city");
    }

    #[test]
    fn every_string_is_bounded() {
        let mut request = valid_request();
        if let Some(a) = request.shipping_address.as_mut() {
            a.line2 = "x".repeat(201);
        }
        assert_eq!(field_of(&request), "shipping_address.line2");
        let mut request = valid_request();
        if let Some(a) = request.shipping_address.as_mut() {
            a.postal_code = "1".repeat(21);
        }
        assert_eq!(field_of(&request), "shipping_address.postal_code");
        let mut request = valid_request();
        if let Some(c) = request.customer.as_mut() {
            c.name = "n".repeat(201);
        }
        assert_eq!(field_of(&request), "customer.name");
    }

    #[test]
    fn control_characters_are_refused() {
        let mut request = valid_request();
        if let Some(a) = request.shipping_address.as_mut() {
            a.city = "Lon\ndon".into();
        }
        assert_eq!(field_of(&request), "shipping_address.city");
    }

    #[test]
    fn email_must_look_like_one() {
        for bad in [
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a da@example.com",
            "a@b@c.com",
            "ada@example..com",
        ] {
            let mut request = valid_request();
            if let Some(c) = request.customer.as_mut() {
                c.email = bad.into();
            }
            assert_eq!(field_of(&request), "customer.email", "{bad}");
        }
    }

    #[test]
    fn phone_allows_only_phone_characters() {
        let mut request = valid_request();
        if let Some(c) = request.customer.as_mut() {
            c.phone = "call me".into();
        }
        assert_eq!(field_of(&request), "customer.phone");
    }

    #[test]
    fn country_code_must_be_iso_alpha2() {
        for bad in ["gb", "UK", "GBR", ""] {
            let mut request = valid_request();
            if let Some(a) = request.shipping_address.as_mut() {
                a.country_code = bad.into();
            }
            assert_eq!(field_of(&request), "shipping_address.country_code", "{bad}");
        }
    }

    #[test]
    fn line_count_is_1_to_100() {
        let mut request = valid_request();
        request.lines.clear();
        assert_eq!(field_of(&request), "lines");
        request.lines = (0..101)
            .map(|i| pb::LineItem {
                sku: format!("SKU-{i}"),
                quantity: 1,
            })
            .collect();
        assert_eq!(field_of(&request), "lines");
        request.lines.truncate(100);
        assert!(validate_place_order(&request).is_ok());
    }

    #[test]
    fn quantity_is_1_to_10000() {
        for (quantity, ok) in [(0, false), (1, true), (10_000, true), (10_001, false)] {
            let mut request = valid_request();
            request.lines[0].quantity = quantity;
            assert_eq!(validate_place_order(&request).is_ok(), ok, "{quantity}");
        }
        let mut request = valid_request();
        request.lines[0].quantity = 0;
        assert_eq!(field_of(&request), "lines[0].quantity");
    }

    #[test]
    fn skus_are_required_and_distinct() {
        let mut request = valid_request();
        request.lines.push(pb::LineItem {
            sku: String::new(),
            quantity: 1,
        });
        assert_eq!(field_of(&request), "lines[1].sku");
        request.lines[1].sku = "MUG-001".into();
        let error = validate_place_order(&request).expect_err("duplicate");
        assert_eq!(error.field, "lines[1].sku");
        assert!(error.rule.contains("lines[0]"), "{}", error.rule);
    }
}
