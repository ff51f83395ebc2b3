//! Key files in the formats partners already have.
//!
//! - Private keys: PKCS#8, PEM (`-----BEGIN PRIVATE KEY-----`, what `openssl genpkey -algorithm
//!   ed25519` and the JWT libraries write) or DER.
//! - Public keys: the raw 32 bytes (what `DispatchAdmin.AddPartnerKey` stores), or
//!   SubjectPublicKeyInfo as PEM (`-----BEGIN PUBLIC KEY-----`, `openssl pkey -pubout`) or DER.

use ed25519_dalek::{
    SigningKey, VerifyingKey,
    pkcs8::{
        DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
        spki::der::pem::LineEnding,
    },
};

use crate::error::KeyError;

/// Reads an Ed25519 private key from PKCS#8 PEM or DER bytes.
pub fn signing_key_from_pkcs8(bytes: &[u8]) -> Result<SigningKey, KeyError> {
    if let Some(text) = pem_text(bytes) {
        return SigningKey::from_pkcs8_pem(text).map_err(|e| {
            KeyError(format!(
                "not a PKCS#8 Ed25519 private key (\"-----BEGIN PRIVATE KEY-----\"): {e}"
            ))
        });
    }
    SigningKey::from_pkcs8_der(bytes)
        .map_err(|e| KeyError(format!("not a PKCS#8 Ed25519 private key (DER): {e}")))
}

/// Reads an Ed25519 public key: raw 32 bytes, or SubjectPublicKeyInfo PEM or DER.
pub fn verifying_key_from_bytes(bytes: &[u8]) -> Result<VerifyingKey, KeyError> {
    if let Some(text) = pem_text(bytes) {
        return VerifyingKey::from_public_key_pem(text).map_err(|e| {
            KeyError(format!(
                "not an Ed25519 public key (\"-----BEGIN PUBLIC KEY-----\"): {e}"
            ))
        });
    }
    if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
        return VerifyingKey::from_bytes(&raw)
            .map_err(|_| KeyError("the 32 bytes are not an Ed25519 public key".to_owned()));
    }
    VerifyingKey::from_public_key_der(bytes).map_err(|e| {
        KeyError(format!(
            "expected a raw 32-byte Ed25519 public key or SubjectPublicKeyInfo, got {} bytes: {e}",
            bytes.len()
        ))
    })
}

/// The private key as PKCS#8 PEM (what partners' JWT libraries read).
///
/// Written as PKCS#8 v1 without the public half, byte for byte what `openssl genpkey` writes:
/// some readers (Python's `cryptography`) refuse the v2 form with the public key embedded.
pub fn signing_key_to_pem(key: &SigningKey) -> Result<String, KeyError> {
    KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .map(|pem| pem.to_string())
    .map_err(|e| KeyError(format!("cannot encode the private key: {e}")))
}

/// The public key as SubjectPublicKeyInfo PEM.
pub fn verifying_key_to_pem(key: &VerifyingKey) -> Result<String, KeyError> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyError(format!("cannot encode the public key: {e}")))
}

fn pem_text(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    let trimmed = text.trim();
    trimmed.starts_with("-----BEGIN").then_some(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`.
    const OPENSSL_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIKwxdfQ/DTm2u3QXs+hnXqQPb0IKxYQrPgiuUdip1SSd
-----END PRIVATE KEY-----
";

    #[test]
    fn reads_openssl_private_keys_and_their_public_halves() {
        let key = signing_key_from_pkcs8(OPENSSL_PRIVATE.as_bytes()).expect("openssl key");
        let public = key.verifying_key();
        let pem = verifying_key_to_pem(&public).expect("pem");
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(
            verifying_key_from_bytes(pem.as_bytes()).expect("spki pem"),
            public
        );
        assert_eq!(
            verifying_key_from_bytes(public.as_bytes()).expect("raw"),
            public
        );
        let der = public.to_public_key_der().expect("der");
        assert_eq!(
            verifying_key_from_bytes(der.as_bytes()).expect("spki der"),
            public
        );
        let round = signing_key_to_pem(&key).expect("pem");
        assert_eq!(
            round, OPENSSL_PRIVATE,
            "written exactly as openssl writes it"
        );
        assert_eq!(
            signing_key_from_pkcs8(round.as_bytes())
                .expect("round trip")
                .to_bytes(),
            key.to_bytes()
        );
    }

    #[test]
    fn refuses_other_things_with_a_clear_message() {
        let error = verifying_key_from_bytes(&[0_u8; 31]).expect_err("31 bytes");
        assert!(error.0.contains("31 bytes"), "{error}");
        let error =
            signing_key_from_pkcs8(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")
                .expect_err("garbage");
        assert!(error.0.contains("PKCS#8"), "{error}");
    }
}
