//! The store's trait: what StatusIngest reads and writes.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    error::StoreError,
    model::{AuthenticatedReport, EnrolledKey, ReportOutcome},
};

/// StatusIngest's view of the database.
#[async_trait]
pub trait IngestStore: Send + Sync + fmt::Debug + 'static {
    /// The key `key_id` enrolled for `partner_id`, revoked or not; `None` if there is none.
    async fn partner_key(
        &self,
        partner_id: &str,
        key_id: &str,
    ) -> Result<Option<EnrolledKey>, StoreError>;

    /// Records `report` (see the module docs): answered once what it did is committed, or
    /// once it was refused.
    async fn record_report(
        &self,
        report: &AuthenticatedReport,
    ) -> Result<ReportOutcome, StoreError>;

    /// Forgets token ids that can no longer be replayed (kept until before `now`); how many.
    async fn purge_token_ids(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
}
