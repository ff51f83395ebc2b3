//! Catalog entries kept for a moment, so that placing an order does not read the catalog every
//! time: prices and availability change rarely, orders arrive by the thousand per second.
//!
//! A change to the catalog (price, name, deactivation) applies to orders placed up to the
//! cache's lifetime later (`--catalog-cache`, default one second; `0s` reads every time). SKUs
//! the catalog does not know are never kept, so requests naming made-up SKUs cannot fill the
//! cache: they are read (and refused) every time, as without it.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use chrono::{DateTime, Utc};
use waybill_service_kit::clock::SharedClock;

use crate::domain::model::CatalogItem;

/// Most entries kept; past it the cache starts over (a real catalog is far smaller).
const MAX_ENTRIES: usize = 100_000;

/// Catalog entries read within the last `lifetime`.
#[derive(Debug)]
pub struct CatalogCache {
    lifetime: chrono::Duration,
    clock: SharedClock,
    entries: Mutex<HashMap<String, (CatalogItem, DateTime<Utc>)>>,
}

impl CatalogCache {
    /// A cache whose entries live for `lifetime` by `clock` (zero: nothing is kept).
    pub fn new(lifetime: Duration, clock: SharedClock) -> Self {
        Self {
            lifetime: chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::MAX),
            clock,
            entries: Mutex::default(),
        }
    }

    /// The entries for `skus` (unknown ones are absent): those read within the lifetime from
    /// the cache, the rest through `read` (one call for all of them), which are then kept.
    pub async fn items<E>(
        &self,
        skus: &[String],
        read: impl AsyncFnOnce(&[String]) -> Result<Vec<CatalogItem>, E>,
    ) -> Result<Vec<CatalogItem>, E> {
        let now = self.clock.now();
        let (mut found, missing) = {
            let entries = self.lock();
            let mut found = Vec::with_capacity(skus.len());
            let mut missing = Vec::new();
            for sku in skus {
                match entries.get(sku) {
                    Some((item, read_at)) if now - *read_at < self.lifetime => {
                        found.push(item.clone());
                    }
                    _ => missing.push(sku.clone()),
                }
            }
            (found, missing)
        };
        if missing.is_empty() {
            return Ok(found);
        }
        let read = read(&missing).await?;
        if self.lifetime > chrono::Duration::zero() {
            let mut entries = self.lock();
            if entries.len() + read.len() > MAX_ENTRIES {
                entries.clear();
            }
            for item in &read {
                entries.insert(item.sku.clone(), (item.clone(), now));
            }
        }
        found.extend(read);
        Ok(found)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (CatalogItem, DateTime<Utc>)>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use waybill_service_kit::clock::ManualClock;

    use super::*;

    fn item(sku: &str, price: i64) -> CatalogItem {
        CatalogItem {
            sku: sku.to_owned(),
            name: sku.to_owned(),
            unit_price_minor: price,
            currency_code: "EUR".to_owned(),
            active: true,
        }
    }

    /// A catalog holding `A` at `price`, counting its reads.
    async fn read_from(
        price: i64,
        reads: &AtomicUsize,
        skus: &[String],
    ) -> Result<Vec<CatalogItem>, Infallible> {
        reads.fetch_add(1, Ordering::SeqCst);
        Ok(skus
            .iter()
            .filter(|sku| *sku == "A")
            .map(|sku| item(sku, price))
            .collect())
    }

    fn skus(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn an_entry_is_kept_for_its_lifetime_then_read_again() {
        let clock = ManualClock::new(Utc::now());
        let cache = CatalogCache::new(Duration::from_secs(1), Arc::new(clock.clone()));
        let reads = AtomicUsize::new(0);
        let first = cache
            .items(&skus(&["A"]), async |s| read_from(100, &reads, s).await)
            .await
            .unwrap();
        assert_eq!(first, [item("A", 100)]);
        // The price changes; within the lifetime the kept entry answers, without a read.
        clock.advance(chrono::Duration::milliseconds(999));
        let kept = cache
            .items(&skus(&["A"]), async |s| read_from(200, &reads, s).await)
            .await
            .unwrap();
        assert_eq!(
            (kept, reads.load(Ordering::SeqCst)),
            (vec![item("A", 100)], 1)
        );
        // Past it, the new price is read.
        clock.advance(chrono::Duration::milliseconds(1));
        let fresh = cache
            .items(&skus(&["A"]), async |s| read_from(200, &reads, s).await)
            .await
            .unwrap();
        assert_eq!(
            (fresh, reads.load(Ordering::SeqCst)),
            (vec![item("A", 200)], 2)
        );
    }

    #[tokio::test]
    async fn unknown_skus_are_never_kept_and_a_zero_lifetime_keeps_nothing() {
        let clock = ManualClock::new(Utc::now());
        let cache = CatalogCache::new(Duration::from_secs(60), Arc::new(clock.clone()));
        let reads = AtomicUsize::new(0);
        for _ in 0..2 {
            let found = cache
                .items(&skus(&["A", "NOPE"]), async |s| {
                    read_from(100, &reads, s).await
                })
                .await
                .unwrap();
            assert_eq!(found, [item("A", 100)]);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 2, "NOPE is read again");
        assert_eq!(cache.lock().len(), 1);

        let uncached = CatalogCache::new(Duration::ZERO, Arc::new(clock));
        for _ in 0..2 {
            uncached
                .items(&skus(&["A"]), async |s| read_from(100, &reads, s).await)
                .await
                .unwrap();
        }
        assert_eq!(reads.load(Ordering::SeqCst), 4);
        assert!(uncached.lock().is_empty());
    }
}
