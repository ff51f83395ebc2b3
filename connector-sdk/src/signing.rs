//! The partner's report-signing key: an Ed25519 private key and the key id it was enrolled
//! under (`DispatchAdmin.AddPartnerKey`). Rotation: enrol a new key, restart the connector
//! with it, then revoke the old one — reports signed with either verify in between.

use std::path::Path;

use waybill_token::{SigningKey, TokenSigner};

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

/// The key could not be read.
#[derive(Debug, thiserror::Error)]
#[error("report signing key: {0}")]
pub struct SigningKeyError(pub String);

impl ReportSigningKey {
    /// Reads a PKCS#8 private key (PEM, as `openssl genpkey -algorithm ed25519` or
    /// `waybill keys generate` writes it, or DER) from `path`.
    pub fn from_pem_file(
        path: impl AsRef<Path>,
        key_id: impl Into<String>,
    ) -> Result<Self, SigningKeyError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| SigningKeyError(format!("cannot read {}: {e}", path.display())))?;
        Self::from_pkcs8(&bytes, key_id)
    }

    /// Reads a PKCS#8 private key from PEM or DER bytes (a secret manager's value).
    pub fn from_pkcs8(bytes: &[u8], key_id: impl Into<String>) -> Result<Self, SigningKeyError> {
        let key = waybill_token::keys::signing_key_from_pkcs8(bytes)
            .map_err(|e| SigningKeyError(e.to_string()))?;
        Self::from_key(key, key_id)
    }

    /// Uses an Ed25519 key already in memory.
    pub fn from_key(key: SigningKey, key_id: impl Into<String>) -> Result<Self, SigningKeyError> {
        let key_id = key_id.into();
        if key_id.trim().is_empty() {
            return Err(SigningKeyError(
                "the key id is empty: give the id the key was enrolled under".to_owned(),
            ));
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

    pub(crate) fn signer(&self) -> &TokenSigner {
        &self.signer
    }
}
