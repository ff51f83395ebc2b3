//! The Postgres ingest store (production). A typical report is two statements in one
//! transaction: the snapshot (replay guard taken, order row locked) and the append (history
//! event, order status and tracking id, dispatch row acknowledged, `NOTIFY` for watchers).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::{
    AuthenticatedReport, EnrolledKey, IngestStore, ReportOutcome, StoreError, parse_state,
    parse_status, rejection_note,
};
use crate::domain::decision::{Decision, Effects, OrderSnapshot, decide};

const SNAPSHOT: &str = include_str!("snapshot.pg.sql");
const APPEND: &str = include_str!("append.pg.sql");

/// The name of the unique index on `(partner_id, report_id)` of the history.
const REPORT_UNIQUE: &str = "order_status_events_report_unique";

/// Reports in Postgres.
#[derive(Debug, Clone)]
pub struct PgIngestStore {
    pool: PgPool,
}

impl PgIngestStore {
    /// A store on `pool` (already migrated).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn try_record(
        &self,
        report: &AuthenticatedReport,
        now: DateTime<Utc>,
    ) -> Result<ReportOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(SNAPSHOT)
            .bind(report.order_id)
            .bind(&report.partner_id)
            .bind(&report.report_id)
            .bind(&report.token_id)
            .bind(report.token_id_kept_until)
            .fetch_optional(&mut *tx)
            .await?;
        // No row: the order does not exist (the replay guard's insert is rolled back).
        let Some(row) = row else {
            return Ok(ReportOutcome::NotRouted);
        };
        let snapshot = OrderSnapshot {
            status: parse_status(row.try_get("status")?)?,
            routed_partner: row.try_get("routed_partner")?,
            dispatch_state: parse_state(row.try_get("dispatch_state")?)?,
            rejected_by_reporter: row.try_get("rejected")?,
            earlier_report_same_order: row.try_get("earlier_same_order")?,
            token_id_fresh: row.try_get("fresh")?,
        };
        let effects = match decide(
            &snapshot,
            &report.partner_id,
            report.status,
            !report.tracking_id.is_empty(),
        ) {
            Decision::Apply(effects) => effects,
            Decision::NotRouted => return Ok(ReportOutcome::NotRouted),
            Decision::Replayed => return Ok(ReportOutcome::Replayed),
            Decision::ReportIdReused => return Ok(ReportOutcome::ReportIdReused),
            // The token id is spent even so: a token is accepted once.
            Decision::Duplicate => {
                tx.commit().await?;
                return Ok(ReportOutcome::Duplicate);
            }
        };
        let sequence = append(&mut tx, report, &effects, now).await?;
        tx.commit().await?;
        Ok(ReportOutcome::Accepted { sequence, effects })
    }
}

async fn append(
    tx: &mut Transaction<'_, Postgres>,
    report: &AuthenticatedReport,
    effects: &Effects,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let sequence: i64 = sqlx::query_scalar(APPEND)
        .bind(report.order_id)
        .bind(&report.partner_id)
        .bind(&report.report_id)
        .bind(effects.order_status.short_name())
        .bind(effects.record_tracking)
        .bind(&report.tracking_id)
        .bind(effects.reroute)
        .bind(report.status.short_name())
        .bind(&report.detail)
        .bind(report.occurred_at)
        .bind(now)
        .bind(&report.detail_code)
        .bind(report.action_required)
        .bind(effects.needs_review)
        .bind(effects.acknowledge)
        .fetch_one(&mut **tx)
        .await?;
    if effects.reroute {
        sqlx::query(
            "INSERT INTO dispatch_rejections (order_id, partner_id, report_id, rejected_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(report.order_id)
        .bind(&report.partner_id)
        .bind(&report.report_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE dispatch SET state = 'PENDING', partner_id = NULL, route_id = NULL, \
                 attempts = 0, resends = 0, next_attempt_at = $3, ack_due_at = NULL, sent_at = NULL, \
                 last_error = $4, lease_owner = NULL, lease_expires_at = NULL, batch_id = NULL, \
                 updated_at = $3 \
             WHERE order_id = $1 AND partner_id = $2",
        )
        .bind(report.order_id)
        .bind(&report.partner_id)
        .bind(now)
        .bind(rejection_note(&report.partner_id, &report.report_id))
        .execute(&mut **tx)
        .await?;
        // Wakes the relays at commit: the order is due for routing again.
        sqlx::query("SELECT pg_notify('waybill_outbox', '')")
            .execute(&mut **tx)
            .await?;
    }
    Ok(sequence)
}

/// A deadlock (40P01) or serialization failure (40001): the transaction was rolled back and may
/// simply be run again. A deadlock can happen because the relay locks a dispatch row and then
/// its order (recording a first send) while a report locks the order and then the dispatch row.
fn is_transient(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db)
        if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// How often a report's transaction is tried when it loses a deadlock.
const ATTEMPTS: u32 = 3;

fn is_report_id_conflict(error: &StoreError) -> bool {
    matches!(error, StoreError::Database(sqlx::Error::Database(db))
        if db.constraint() == Some(REPORT_UNIQUE))
}

#[async_trait]
impl IngestStore for PgIngestStore {
    async fn partner_key(
        &self,
        partner_id: &str,
        key_id: &str,
    ) -> Result<Option<EnrolledKey>, StoreError> {
        let row = sqlx::query(
            "SELECT public_key, revoked_at FROM partner_keys WHERE partner_id = $1 AND key_id = $2",
        )
        .bind(partner_id)
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(EnrolledKey {
                public_key: row.try_get("public_key")?,
                revoked_at: row.try_get("revoked_at")?,
            })
        })
        .transpose()
    }

    async fn record_report(
        &self,
        report: &AuthenticatedReport,
        now: DateTime<Utc>,
    ) -> Result<ReportOutcome, StoreError> {
        let mut attempt = 1;
        let outcome = loop {
            match self.try_record(report, now).await {
                Err(StoreError::Database(cause)) if is_transient(&cause) => {
                    if attempt == ATTEMPTS {
                        // Still losing: answer UNAVAILABLE (retry with a fresh token), not INTERNAL.
                        break Err(StoreError::Unavailable(cause));
                    }
                    tracing::debug!(order_id = %report.order_id, attempt, error = %cause, "report transaction lost a deadlock, trying again");
                    attempt += 1;
                }
                other => break other,
            }
        };
        match outcome {
            // The same report id committed by a concurrent call after this transaction's
            // snapshot: decide again from what is committed now.
            Err(error) if is_report_id_conflict(&error) => {
                let order: Option<uuid::Uuid> = sqlx::query_scalar(
                    "SELECT order_id FROM order_status_events WHERE partner_id = $1 AND report_id = $2",
                )
                .bind(&report.partner_id)
                .bind(&report.report_id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(if order == Some(report.order_id) {
                    ReportOutcome::Duplicate
                } else {
                    ReportOutcome::ReportIdReused
                })
            }
            other => other,
        }
    }

    async fn purge_token_ids(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM report_token_ids WHERE expires_at < $1")
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}
