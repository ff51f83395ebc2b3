//! The one [`IngestStore`]: key lookup, purging and a key's last use (written after an
//! accepted report, at most once a minute per key: [`KeyUse`]) are written once with
//! [`on_pool!`]; reports
//! go through the group commit (`writer.rs`) to [`SqlIngestStore::record_batch`], whose
//! transaction (`batches.rs`) is `postgres.rs` (rows locked without waiting, a report whose
//! rows are busy left out and recorded alone) or `sqlite.rs` (the single writer). Both decide
//! on the same snapshot row, carry out a rejection with the same statements and keep each
//! report under the same savepoint (`statements.rs`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use waybill_service_kit::{
    clock::SharedClock,
    db::{Database, Instant},
    on_pool,
};

use super::{
    batches::{Batches, Session},
    error::StoreError,
    model::{AuthenticatedReport, EnrolledKey, InBatch, ReportOutcome},
    traits::IngestStore,
    writer::Writer,
};
use crate::keys::KeyUse;

const PARTNER_KEY: &str = "SELECT public_key, revoked_at FROM partner_keys \
                           WHERE partner_id = $1 AND key_id = $2";
/// Never backwards: instances write their own times, in any order.
const MARK_KEY_USED: &str = "UPDATE partner_keys SET last_used_at = $3 \
                             WHERE partner_id = $1 AND key_id = $2 \
                               AND (last_used_at IS NULL OR last_used_at < $3)";
const PURGE: &str = "DELETE FROM report_token_ids WHERE expires_at < $1";

/// Reports in the services' database, Postgres or SQLite, written by a group commit.
#[derive(Debug)]
pub struct SqlIngestStore {
    batches: Batches,
    writer: Writer,
    /// When each key's use was last written (at most once a minute per key).
    key_use: KeyUse,
    clock: SharedClock,
}

impl SqlIngestStore {
    /// A store on `db` (already migrated) that records times from `clock`. Its writer starts
    /// with the first report, on the runtime that reports it.
    pub fn new(db: &Database, clock: SharedClock) -> Self {
        Self {
            batches: Batches::new(db, clock.clone()),
            writer: Writer::default(),
            key_use: KeyUse::default(),
            clock,
        }
    }

    /// Records `reports` in one transaction, each under a savepoint of its own, committed once;
    /// what the batch did with each, in order. `Err`: the batch failed as a whole (it could not
    /// begin, the connection broke, the commit failed) and none of it was recorded — or, for a
    /// commit whose answer was lost, perhaps all of it (`Unavailable`: a retry of a report
    /// recorded after all is a duplicate). At most [`MAX_BATCH`](super::MAX_BATCH) reports.
    /// Outside the group commit (for tests of the batch itself): on Postgres each call opens, and
    /// closes, a connection of its own, as the writer's would be.
    pub async fn record_batch(
        &self,
        reports: &[AuthenticatedReport],
    ) -> Result<Vec<InBatch>, StoreError> {
        self.batches.record(&mut Session::default(), reports).await
    }
}

impl SqlIngestStore {
    /// Gives a batch up after `limit` instead of [`WRITE_LIMIT`](crate::store::WRITE_LIMIT)
    /// (its callers are answered unavailable). Call before the first report.
    #[must_use]
    pub fn with_write_limit(mut self, limit: std::time::Duration) -> Self {
        self.writer = Writer::new(limit);
        self
    }

    /// Writes that the report's key was used now, at most once a minute per key and instance
    /// ([`KeyUse`]: not a write per report, and never inside the reports' transactions). A
    /// failed write is logged and tried again with the next report; the report stands.
    async fn note_key_use(&self, report: &AuthenticatedReport) {
        let now = self.clock.now();
        if !self.key_use.due(&report.partner_id, &report.key_id, now) {
            return;
        }
        let written: Result<u64, StoreError> = async {
            Ok(on_pool!(self.batches.backend(), |pool| {
                sqlx::query(MARK_KEY_USED)
                    .bind(&report.partner_id)
                    .bind(&report.key_id)
                    .bind(Instant(now))
                    .execute(pool)
                    .await?
                    .rows_affected()
            }))
        }
        .await;
        if let Err(error) = written {
            self.key_use.failed(&report.partner_id, &report.key_id);
            tracing::warn!(partner_id = %report.partner_id, key_id = %report.key_id, %error, "could not record when the key was last used");
        }
    }
}

/// An enrolled key.
#[derive(Debug, sqlx::FromRow)]
struct KeyRow {
    public_key: Vec<u8>,
    revoked_at: Option<Instant>,
}

#[async_trait]
impl IngestStore for SqlIngestStore {
    async fn partner_key(
        &self,
        partner_id: &str,
        key_id: &str,
    ) -> Result<Option<EnrolledKey>, StoreError> {
        let row: Option<KeyRow> = on_pool!(self.batches.backend(), |pool| {
            sqlx::query_as(PARTNER_KEY)
                .bind(partner_id)
                .bind(key_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|row| EnrolledKey {
            public_key: row.public_key,
            revoked_at: row.revoked_at.map(Into::into),
        }))
    }

    async fn record_report(
        &self,
        report: &AuthenticatedReport,
    ) -> Result<ReportOutcome, StoreError> {
        let outcome = match self.writer.submit(&self.batches, report.clone()).await? {
            InBatch::Decided(outcome) => outcome,
            InBatch::Failed(error) => return Err(error),
            InBatch::LeftOut => self.batches.record_alone(report).await?,
        };
        // Accepted, or a duplicate (its token was valid all the same): the key is in use.
        if matches!(
            outcome,
            ReportOutcome::Accepted { .. } | ReportOutcome::Duplicate
        ) {
            self.note_key_use(report).await;
        }
        Ok(outcome)
    }

    async fn purge_token_ids(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(on_pool!(self.batches.backend(), |pool| {
            sqlx::query(PURGE)
                .bind(Instant(now))
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }
}
