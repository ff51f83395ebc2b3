//! Prices requested lines from the catalog. Money is integer minor units of one ISO 4217
//! currency; every multiplication and sum is checked, so an absurd order is refused, never
//! wrapped around.

use std::collections::HashMap;

use waybill_service_kit::text::quote;

use super::{
    InvalidField,
    model::{CatalogItem, PricedLine},
    validate::RequestedLine,
};

/// Lines with catalog prices, and their total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedOrder {
    /// In request order.
    pub lines: Vec<PricedLine>,
    /// The one currency of every line.
    pub currency_code: String,
    /// Sum of the line totals.
    pub total_minor: i64,
}

/// Prices `lines` from `catalog` (keyed by SKU).
pub fn price(
    lines: &[RequestedLine],
    catalog: &HashMap<String, CatalogItem>,
) -> Result<PricedOrder, InvalidField> {
    let mut priced = Vec::with_capacity(lines.len());
    let mut currency: Option<&str> = None;
    let mut total: i64 = 0;
    for (index, line) in lines.iter().enumerate() {
        let item = catalog.get(&line.sku).ok_or_else(|| {
            InvalidField::new(
                format!("lines[{index}].sku"),
                format!("{} is not in the catalog", quote(&line.sku)),
            )
        })?;
        if !item.active {
            return Err(InvalidField::new(
                format!("lines[{index}].sku"),
                format!(
                    "{} is retired from the catalog and can no longer be ordered",
                    quote(&line.sku)
                ),
            ));
        }
        match currency {
            None => currency = Some(&item.currency_code),
            Some(first) if first != item.currency_code => {
                return Err(InvalidField::new(
                    format!("lines[{index}].sku"),
                    format!(
                        "{} is priced in {} but lines[0] is in {first}; one order has one currency",
                        quote(&line.sku),
                        item.currency_code
                    ),
                ));
            }
            Some(_) => {}
        }
        let line_total = item
            .unit_price_minor
            .checked_mul(i64::from(line.quantity))
            .ok_or_else(|| {
                InvalidField::new(
                    format!("lines[{index}].quantity"),
                    "line total is larger than Waybill can represent",
                )
            })?;
        total = total.checked_add(line_total).ok_or_else(|| {
            InvalidField::new("lines", "order total is larger than Waybill can represent")
        })?;
        priced.push(PricedLine {
            sku: item.sku.clone(),
            name: item.name.clone(),
            quantity: line.quantity,
            unit_price_minor: item.unit_price_minor,
            line_total_minor: line_total,
        });
    }
    let currency_code = currency
        .ok_or_else(|| InvalidField::new("lines", "must have at least one line"))?
        .to_owned();
    Ok(PricedOrder {
        lines: priced,
        currency_code,
        total_minor: total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku: &str, price: i64, currency: &str) -> (String, CatalogItem) {
        (
            sku.to_owned(),
            CatalogItem {
                sku: sku.to_owned(),
                name: format!("{sku} name"),
                unit_price_minor: price,
                currency_code: currency.to_owned(),
                active: true,
            },
        )
    }

    fn line(sku: &str, quantity: u32) -> RequestedLine {
        RequestedLine {
            sku: sku.to_owned(),
            quantity,
        }
    }

    #[test]
    fn totals_come_from_catalog_prices() {
        let catalog = HashMap::from([item("A", 1250, "USD"), item("B", 999, "USD")]);
        let priced = price(&[line("A", 2), line("B", 3)], &catalog).expect("priced");
        assert_eq!(priced.total_minor, 2 * 1250 + 3 * 999);
        assert_eq!(priced.currency_code, "USD");
        assert_eq!(priced.lines[1].line_total_minor, 2997);
        assert_eq!(priced.lines[0].name, "A name");
    }

    #[test]
    fn unknown_or_inactive_skus_are_refused() {
        let mut catalog = HashMap::from([item("A", 100, "USD"), item("OLD", 100, "USD")]);
        if let Some(old) = catalog.get_mut("OLD") {
            old.active = false;
        }
        let error = price(&[line("A", 1), line("NOPE", 1)], &catalog).expect_err("unknown");
        assert_eq!(
            error.to_string(),
            "lines[1].sku: \"NOPE\" is not in the catalog"
        );
        let error = price(&[line("OLD", 1)], &catalog).expect_err("inactive");
        assert_eq!(error.field, "lines[0].sku");
    }

    #[test]
    fn one_currency_per_order() {
        let catalog = HashMap::from([item("A", 100, "USD"), item("E", 100, "EUR")]);
        let error = price(&[line("A", 1), line("E", 1)], &catalog).expect_err("mixed");
        assert_eq!(error.field, "lines[1].sku");
        assert!(error.rule.contains("one currency"), "{}", error.rule);
    }

    #[test]
    fn overflow_is_refused_not_wrapped() {
        let catalog = HashMap::from([
            item("BIG", i64::MAX / 2, "USD"),
            item("HUGE", i64::MAX, "USD"),
        ]);
        let error = price(&[line("HUGE", 2)], &catalog).expect_err("line overflow");
        assert_eq!(error.field, "lines[0].quantity");
        let error =
            price(&[line("BIG", 1), line("HUGE", 1)], &catalog).expect_err("total overflow");
        assert_eq!(error.field, "lines");
    }
}
