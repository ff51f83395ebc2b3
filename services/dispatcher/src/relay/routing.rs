//! The relay's routing table, kept while the partners and routes are unchanged.
//!
//! Every lease reads the routing tables' version with its rows, in the same statement
//! (migration 0010: a trigger moves it in every transaction that changes a partner or a
//! route, an operator's own SQL included). A batch whose version is the one kept routes by the
//! kept table; otherwise the table is read again (two statements, each a round trip to the
//! database with the pool's checks) and kept under the lease's version. The table is read
//! after the lease, so it holds every change committed before the lease; one read later than
//! that is merely newer, and the next lease's version makes it be read again.

use std::{
    future::Future,
    sync::{Arc, Mutex, PoisonError},
};

use crate::{domain::routing::RoutingTable, store::StoreError};

/// The routing table kept under the version it was read at.
#[derive(Debug, Default)]
pub(super) struct RoutingCache {
    kept: Mutex<Option<(i64, Arc<RoutingTable>)>>,
}

impl RoutingCache {
    /// The table for a batch leased at `version`: the kept one if it is that version's, else
    /// one `read` now (kept under `version`; not kept when the version is not known).
    pub(super) async fn table<F, Fut>(
        &self,
        version: Option<i64>,
        read: F,
    ) -> Result<Arc<RoutingTable>, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<RoutingTable, StoreError>>,
    {
        if let Some(version) = version
            && let Some((kept, table)) = &*self.lock()
            && *kept == version
        {
            return Ok(Arc::clone(table));
        }
        let table = Arc::new(read().await?);
        if let Some(version) = version {
            *self.lock() = Some((version, Arc::clone(&table)));
        }
        Ok(table)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(i64, Arc<RoutingTable>)>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Reads an empty table, counting the reads.
    async fn table(
        cache: &RoutingCache,
        reads: &AtomicUsize,
        version: Option<i64>,
    ) -> Arc<RoutingTable> {
        cache
            .table(version, || async {
                reads.fetch_add(1, Ordering::SeqCst);
                Ok(RoutingTable::new(Vec::new(), Vec::new()))
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_table_is_read_again_only_when_the_version_moves_or_is_unknown() {
        let (cache, reads) = (RoutingCache::default(), AtomicUsize::new(0));
        let first = table(&cache, &reads, Some(3)).await;
        let again = table(&cache, &reads, Some(3)).await;
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        table(&cache, &reads, Some(4)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        // Unknown: read every time, and what is kept stays.
        table(&cache, &reads, None).await;
        table(&cache, &reads, None).await;
        assert_eq!(reads.load(Ordering::SeqCst), 4);
        table(&cache, &reads, Some(4)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_failed_read_keeps_nothing() {
        let (cache, reads) = (RoutingCache::default(), AtomicUsize::new(0));
        let failed = cache
            .table(Some(1), || async {
                Err(StoreError::Corrupt("the database went away".to_owned()))
            })
            .await;
        assert!(failed.is_err());
        table(&cache, &reads, Some(1)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }
}
