//! The rules a catalog item must meet, one owner for the `CatalogService` RPCs and for
//! `waybill catalog import` (which checks every row of a file with them before sending any).
//! Each failure names the field and the rule; nothing is trimmed or rewritten.

use waybill_service_kit::text::{TextKind, check_required_text, quote};

use super::InvalidField;

/// Longest SKU (as `PlaceOrder`'s lines).
pub const MAX_SKU_CHARS: usize = 64;
/// Longest item name.
pub const MAX_NAME_CHARS: usize = 200;
/// Largest price in minor units (ten billion in a two-decimal currency): far above any real
/// price, far below where a 10,000-unit, 100-line order total could overflow.
pub const MAX_PRICE_MINOR: i64 = 1_000_000_000_000;
/// Most items in one `UpsertCatalogItems` or `RetireCatalogItems` call.
pub const MAX_BATCH: usize = 10_000;
/// Default and largest `ListCatalogItems` page.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest `ListCatalogItems` page.
pub const MAX_PAGE_SIZE: u32 = 1_000;

/// A catalog item that passed [`check_item`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemInput<'a> {
    /// The SKU.
    pub sku: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Price in minor units.
    pub price_minor: i64,
    /// ISO 4217 code.
    pub currency_code: &'a str,
}

/// A SKU: 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
pub fn check_sku(field: &str, sku: &str) -> Result<(), InvalidField> {
    if sku.is_empty() {
        return Err(InvalidField::new(field, "is required"));
    }
    if sku.chars().count() > MAX_SKU_CHARS
        || !sku
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(InvalidField::new(
            field,
            format!(
                "{}: must be 1 to {MAX_SKU_CHARS} letters, digits, '-', '_' or '.'",
                quote(sku)
            ),
        ));
    }
    Ok(())
}

/// Checks one item; `prefix` names it in errors (`items[3]`, or empty for a file's row, whose
/// line is named by the caller).
pub fn check_item(prefix: &str, item: &ItemInput<'_>) -> Result<(), InvalidField> {
    let field = |name: &str| {
        if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        }
    };
    check_sku(&field("sku"), item.sku)?;
    check_required_text(&field("name"), item.name, MAX_NAME_CHARS, TextKind::Line)?;
    check_price(&field("price_minor"), item.price_minor)?;
    check_currency(&field("currency_code"), item.currency_code)
}

/// A price: 0 to [`MAX_PRICE_MINOR`] minor units.
pub fn check_price(field: &str, price: i64) -> Result<(), InvalidField> {
    if price < 0 {
        return Err(InvalidField::new(
            field,
            format!("\"{price}\": must be 0 or more"),
        ));
    }
    if price > MAX_PRICE_MINOR {
        return Err(InvalidField::new(
            field,
            format!("\"{price}\": must be at most {MAX_PRICE_MINOR}"),
        ));
    }
    Ok(())
}

/// An ISO 4217 code: three upper-case ASCII letters.
pub fn check_currency(field: &str, code: &str) -> Result<(), InvalidField> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(InvalidField::new(
            field,
            format!(
                "{}: must be an ISO 4217 code, three upper-case letters",
                quote(code)
            ),
        ))
    }
}

/// A batch size: 1 to [`MAX_BATCH`].
pub fn check_batch(field: &str, count: usize) -> Result<(), InvalidField> {
    if count == 0 || count > MAX_BATCH {
        return Err(InvalidField::new(
            field,
            format!("must hold 1 to {MAX_BATCH} entries, got {count}"),
        ));
    }
    Ok(())
}

/// A `ListCatalogItems` page size (0: the default).
pub fn page_size(size: u32) -> Result<u32, InvalidField> {
    super::validate::page_size_within(size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn item<'a>(sku: &'a str, name: &'a str, price: i64, currency: &'a str) -> ItemInput<'a> {
        ItemInput {
            sku,
            name,
            price_minor: price,
            currency_code: currency,
        }
    }

    #[test]
    fn each_rule_names_its_field() {
        assert!(check_item("items[0]", &item("MUG-1", "Mug", 0, "EUR")).is_ok());
        for (bad, field) in [
            (item("", "Mug", 1, "EUR"), "items[0].sku"),
            (item("a b", "Mug", 1, "EUR"), "items[0].sku"),
            (item("A", "", 1, "EUR"), "items[0].name"),
            (item("A", "bad\u{7}", 1, "EUR"), "items[0].name"),
            (item("A", "Mug", -3, "EUR"), "items[0].price_minor"),
            (
                item("A", "Mug", MAX_PRICE_MINOR + 1, "EUR"),
                "items[0].price_minor",
            ),
            (item("A", "Mug", 1, "eur"), "items[0].currency_code"),
            (item("A", "Mug", 1, "EURO"), "items[0].currency_code"),
        ] {
            assert_eq!(check_item("items[0]", &bad).unwrap_err().field, field);
        }
        let error = check_item("", &item("A", "Mug", -3, "EUR")).unwrap_err();
        assert_eq!(error.to_string(), "price_minor: \"-3\": must be 0 or more");
        assert!(check_batch("items", 0).is_err());
        assert!(check_batch("items", MAX_BATCH + 1).is_err());
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert!(page_size(MAX_PAGE_SIZE + 1).is_err());
    }
}
