//! The audit rule: an order whose total is at or above its currency's threshold is also produced
//! to the audit topic. Thresholds are per currency (amounts in different currencies are never
//! compared); a currency without a threshold is never audited.

use std::collections::BTreeMap;

/// The default: 10,000.00 USD.
pub const DEFAULT_THRESHOLD: &str = "USD=1000000";

/// Audit thresholds in minor units, by ISO 4217 currency code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditThresholds {
    by_currency: BTreeMap<String, i64>,
}

impl AuditThresholds {
    /// Parses `CUR=MINOR_UNITS` entries such as `USD=1000000` (10,000.00 USD).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut by_currency = BTreeMap::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            let (currency, amount) = entry.split_once('=').ok_or_else(|| {
                format!("audit threshold {entry:?} must look like USD=1000000 (minor units)")
            })?;
            let currency = currency.trim();
            if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(format!(
                    "audit threshold {entry:?}: {currency:?} is not an upper-case ISO 4217 code"
                ));
            }
            let amount: i64 = amount.trim().parse().map_err(|_| {
                format!("audit threshold {entry:?}: the amount must be whole minor units")
            })?;
            if amount < 0 {
                return Err(format!(
                    "audit threshold {entry:?}: the amount must not be negative"
                ));
            }
            if by_currency.insert(currency.to_owned(), amount).is_some() {
                return Err(format!("audit threshold for {currency} given twice"));
            }
        }
        Ok(Self { by_currency })
    }

    /// Whether an order of `total_minor` in `currency_code` goes to the audit topic.
    pub fn is_audited(&self, currency_code: &str, total_minor: i64) -> bool {
        self.by_currency
            .get(currency_code)
            .is_some_and(|threshold| total_minor >= *threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_threshold_is_audited() {
        let thresholds = AuditThresholds::parse(&[DEFAULT_THRESHOLD]).expect("valid");
        assert!(thresholds.is_audited("USD", 1_000_000));
        assert!(thresholds.is_audited("USD", 1_000_001));
        assert!(!thresholds.is_audited("USD", 999_999));
        assert!(
            !thresholds.is_audited("EUR", 5_000_000),
            "other currencies are not compared"
        );
    }

    #[test]
    fn refuses_bad_entries() {
        for bad in ["USD", "usd=1", "USD=1.5", "USD=-1", "DOLLAR=5"] {
            assert!(
                AuditThresholds::parse(&[bad]).is_err(),
                "{bad:?} was accepted"
            );
        }
        assert!(AuditThresholds::parse(&["USD=1", "USD=2"]).is_err());
    }
}
