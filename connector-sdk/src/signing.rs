//! The partner's report-signing key: an Ed25519 private key and the key id it was enrolled
//! under (`DispatchAdmin.AddPartnerKey`). Rotation: enrol a new key, restart the connector
//! with it, then revoke the old one — reports signed with either verify in between.
//!
//! Every field of a report the connector sends is signed (`ReportSigningKey::signed_request`):
//! the request and its token's claims are made from the same stored report, so nothing the
//! partner says — detail, detail code and action required included — travels unsigned.

use std::path::Path;

use chrono::{DateTime, Utc};
use waybill_proto::v1::{OrderStatus, ReportStatusRequest};
use waybill_token::{Report, ReportClaims, SigningKey, TokenSigner};

use crate::inbox::StoredReport;

/// A key that signs this connector's reports.
#[derive(Clone)]
pub struct ReportSigningKey {
    signer: TokenSigner,
}

impl std::fmt::Debug for ReportSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("ReportSigningKey")
            .field("key_id", &self.signer.key_id())
            .finish_non_exhaustive()
    }
}

/// The key could not be read. Never retryable: give another file, key or key id.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    /// The key file could not be read.
    #[error("report signing key: cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// What the file system said.
        reason: String,
    },
    /// The bytes are not an Ed25519 private key in PKCS#8 (PEM or DER).
    #[error("report signing key: {0}")]
    NotAKey(String),
    /// The key id is empty.
    #[error("report signing key: the key id is empty: give the id the key was enrolled under")]
    EmptyKeyId,
}

impl ReportSigningKey {
    /// Reads a PKCS#8 private key (PEM, as `openssl genpkey -algorithm ed25519` or
    /// `waybill keys generate` writes it, or DER) from `path`.
    pub fn from_pem_file(
        path: impl AsRef<Path>,
        key_id: impl Into<String>,
    ) -> Result<Self, SigningKeyError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| SigningKeyError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_pkcs8(&bytes, key_id)
    }

    /// Reads a PKCS#8 private key from PEM or DER bytes (a secret manager's value).
    pub fn from_pkcs8(bytes: &[u8], key_id: impl Into<String>) -> Result<Self, SigningKeyError> {
        let key = waybill_token::keys::signing_key_from_pkcs8(bytes)
            .map_err(|e| SigningKeyError::NotAKey(e.to_string()))?;
        Self::from_key(key, key_id)
    }

    /// Uses an Ed25519 key already in memory.
    pub fn from_key(key: SigningKey, key_id: impl Into<String>) -> Result<Self, SigningKeyError> {
        let key_id = key_id.into();
        if key_id.trim().is_empty() {
            return Err(SigningKeyError::EmptyKeyId);
        }
        Ok(Self {
            signer: TokenSigner::new(key, key_id),
        })
    }

    /// The enrolled key id (`kid`).
    pub fn key_id(&self) -> &str {
        self.signer.key_id()
    }

    /// The raw 32-byte public key: what `DispatchAdmin.AddPartnerKey` enrols.
    pub fn public_key(&self) -> [u8; 32] {
        self.signer.verifying_key().to_bytes()
    }

    /// The `ReportStatus` request for `report` of partner `partner_id`, with a fresh token
    /// (a new `jti`) for `audience`, issued at `now` and valid `lifetime_seconds`, whose claims
    /// bind every field of the request.
    pub(crate) fn signed_request(
        &self,
        partner_id: &str,
        report: &StoredReport,
        audience: &str,
        now: DateTime<Utc>,
        lifetime_seconds: i64,
    ) -> ReportStatusRequest {
        let claims = ReportClaims::new(
            &Report {
                partner_id: partner_id.to_owned(),
                order_id: report.order_id.clone(),
                report_id: report.report_id.clone(),
                status: report.status.clone(),
                tracking_id: report.tracking_id.clone(),
                detail: report.detail.clone(),
                detail_code: report.detail_code.clone(),
                action_required: report.action_required,
                occurred_at: report.occurred_at,
            },
            audience,
            now,
            lifetime_seconds,
            uuid::Uuid::new_v4().to_string(),
        );
        ReportStatusRequest {
            correlation_id: report.order_id.clone(),
            partner_id: partner_id.to_owned(),
            report_id: report.report_id.clone(),
            status: OrderStatus::from_short_name(&report.status).map_or(0, |status| status as i32),
            tracking_id: report.tracking_id.clone(),
            detail: report.detail.clone(),
            occurred_at: Some(waybill_proto::time::to_timestamp(report.occurred_at)),
            token: self.signer.sign(&claims),
            detail_code: report.detail_code.clone(),
            action_required: report.action_required,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report as StatusIngest sees it: every field read back from the request.
    fn as_received(request: &ReportStatusRequest) -> Report {
        Report {
            partner_id: request.partner_id.clone(),
            order_id: request.correlation_id.clone(),
            report_id: request.report_id.clone(),
            status: OrderStatus::try_from(request.status)
                .map(|s| s.short_name().to_owned())
                .unwrap_or_default(),
            tracking_id: request.tracking_id.clone(),
            detail: request.detail.clone(),
            detail_code: request.detail_code.clone(),
            action_required: request.action_required,
            occurred_at: request
                .occurred_at
                .as_ref()
                .and_then(waybill_proto::time::from_timestamp)
                .unwrap_or_default(),
        }
    }

    #[test]
    fn every_field_sent_is_signed() {
        let key =
            ReportSigningKey::from_key(SigningKey::from_bytes(&[4; 32]), "acme-2026").expect("key");
        let now = DateTime::from_timestamp(1_795_342_500, 250_000_000).expect("time");
        let stored = StoredReport::pending(
            "r-1".into(),
            "0193a3f0-0000-7000-8000-000000000001".into(),
            "EXCEPTION",
            "1Z999".into(),
            "nobody at home\ncalled twice".into(),
            "DELIVERY_ATTEMPTED".into(),
            true,
            now,
            "http://127.0.0.1:50053".into(),
            None,
        );
        let request = key.signed_request("acme", &stored, "waybill-test", now, 120);
        let verifying = key.signer.verifying_key();
        waybill_token::verify(
            &request.token,
            &verifying,
            "waybill-test",
            &as_received(&request),
            now,
        )
        .expect("the request verifies as sent");
        let changes: [fn(&mut ReportStatusRequest); 4] = [
            |r| r.detail = "delivered".into(),
            |r| r.detail_code.clear(),
            |r| r.action_required = false,
            |r| r.tracking_id = "1Z000".into(),
        ];
        for change in changes {
            let mut altered = request.clone();
            change(&mut altered);
            let error = waybill_token::verify(
                &altered.token,
                &verifying,
                "waybill-test",
                &as_received(&altered),
                now,
            )
            .expect_err("a field changed after signing is refused");
            assert_eq!(error.reason, waybill_token::RejectReason::ClaimMismatch);
        }
    }
}
