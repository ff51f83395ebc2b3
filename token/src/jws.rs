//! The compact JWS itself: signing, parsing and the checks, each a separate step so that a
//! verifier can look the key up (by the token's `iss` and `kid`) between parsing and the
//! signature check, and can tell exactly which check failed.
//!
//! Parsing is done here by hand — three base64url parts and two small JSON objects — because
//! every JWT crate that verifies EdDSA either installs process-wide state (`jsonwebtoken`'s
//! crypto provider) or hides which check failed; the cryptography is `ed25519-dalek`'s
//! `verify_strict`.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::claims::{Audience, Report, ReportClaims};
use crate::{
    claims::{MAX_KEY_ID_BYTES, check_identifier},
    error::{RejectReason, TokenError, snippet},
};

/// The `typ` header of a report token (RFC 8725 explicit typing).
pub const TOKEN_TYPE: &str = "wb-report+jwt";
/// The `alg` header emitted (RFC 8037). `Ed25519` (RFC 9864) is accepted as an alias.
pub const ALGORITHM: &str = "EdDSA";
/// The longest accepted `exp - iat`, in seconds.
pub const MAX_LIFETIME_SECONDS: i64 = 300;
/// Clock skew tolerated either way, in seconds.
pub const MAX_SKEW_SECONDS: i64 = 60;
/// Longer tokens are refused before any decoding. Room for the longest report a request may
/// carry (a detail of 1,024 characters, report and tracking ids of 128) even when the partner's
/// JSON library escapes every character outside ASCII (PyJWT does: up to 12 bytes for one
/// character), base64url-encoded: about 22 KiB.
pub const MAX_TOKEN_BYTES: usize = 32 * 1024;

/// Headers that carry a key or point at one: a verifier that honoured them would let the token
/// choose its own key. Their presence refuses the token.
const KEY_HEADERS: [&str; 4] = ["jwk", "jku", "x5u", "x5c"];

#[derive(Serialize)]
struct HeaderOut<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

/// Signs report tokens with one private key.
#[derive(Clone)]
pub struct TokenSigner {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("TokenSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A signer with `key`, enrolled as `key_id`.
    pub fn new(key: SigningKey, key_id: impl Into<String>) -> Self {
        Self {
            key,
            key_id: key_id.into(),
        }
    }

    /// The enrolled key id (`kid`).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public half, to enrol.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The compact JWS of `claims`.
    pub fn sign(&self, claims: &ReportClaims) -> String {
        let header = HeaderOut {
            alg: ALGORITHM,
            typ: TOKEN_TYPE,
            kid: &self.key_id,
        };
        // Serialising these plain structs cannot fail.
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let claims = serde_json::to_vec(claims).unwrap_or_default();
        let mut token = String::with_capacity(256);
        token.push_str(&URL_SAFE_NO_PAD.encode(header));
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims));
        let signature = self.key.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        token
    }
}

/// The known header fields; deserialising into a struct refuses duplicated names.
#[derive(Deserialize)]
struct HeaderIn {
    alg: Option<String>,
    typ: Option<String>,
    kid: Option<String>,
}

/// A well-formed token of our type and algorithm whose signature is NOT yet checked: only
/// [`ParsedToken::key_id`] and [`ParsedToken::issuer`] may be used, to find the key.
#[derive(Debug, Clone)]
pub struct ParsedToken {
    key_id: String,
    claims: ReportClaims,
    signing_input_len: usize,
    signature: Signature,
    token: String,
}

impl ParsedToken {
    /// Checks the form, the type and the algorithm.
    pub fn parse(token: &str) -> Result<Self, TokenError> {
        let malformed = |detail: String| TokenError::new(RejectReason::Malformed, detail);
        if token.len() > MAX_TOKEN_BYTES {
            return Err(malformed(format!(
                "token is {} bytes, more than {MAX_TOKEN_BYTES}",
                token.len()
            )));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed(
                "a token is three base64url parts separated by '.' (compact JWS)".to_owned(),
            ));
        };
        let header_bytes = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| malformed("header is not unpadded base64url".to_owned()))?;
        let header_map: Map<String, Value> = serde_json::from_slice(&header_bytes)
            .map_err(|e| malformed(format!("header is not a JSON object: {e}")))?;
        let header: HeaderIn =
            serde_json::from_slice(&header_bytes).map_err(|e| malformed(format!("header: {e}")))?;

        match header.alg.as_deref() {
            Some("EdDSA" | "Ed25519") => {}
            Some(other) => {
                return Err(TokenError::new(
                    RejectReason::WrongAlgorithm,
                    format!(
                        "alg {} is not accepted; sign with EdDSA (Ed25519)",
                        snippet(other)
                    ),
                ));
            }
            None => {
                return Err(TokenError::new(
                    RejectReason::WrongAlgorithm,
                    "header has no alg; sign with EdDSA (Ed25519)",
                ));
            }
        }
        if let Some(name) = KEY_HEADERS
            .iter()
            .find(|name| header_map.contains_key(**name))
        {
            return Err(TokenError::new(
                RejectReason::KeyInHeader,
                format!(
                    "header {name} is refused: keys are only the ones enrolled for the partner"
                ),
            ));
        }
        if header_map.contains_key("crit") {
            return Err(TokenError::new(
                RejectReason::CriticalHeader,
                "header crit is refused: no JWS extension is understood",
            ));
        }
        let typ_ok = header.typ.as_deref().is_some_and(|typ| {
            let typ = typ.to_ascii_lowercase();
            typ == TOKEN_TYPE || typ == format!("application/{TOKEN_TYPE}")
        });
        if !typ_ok {
            return Err(TokenError::new(
                RejectReason::WrongType,
                format!(
                    "typ is {}, expected {TOKEN_TYPE:?}",
                    header.typ.as_deref().map_or("missing".to_owned(), snippet)
                ),
            ));
        }
        let key_id = header.kid.unwrap_or_default();
        check_identifier(
            "header kid (the enrolled key id)",
            &key_id,
            MAX_KEY_ID_BYTES,
        )?;

        let claims_bytes = URL_SAFE_NO_PAD
            .decode(claims_b64)
            .map_err(|_| malformed("claims are not unpadded base64url".to_owned()))?;
        let claims: ReportClaims =
            serde_json::from_slice(&claims_bytes).map_err(|e| malformed(format!("claims: {e}")))?;
        claims.occurred_at()?;
        // iss and kid find the key before the signature is checked, jti goes into the replay
        // guard: each is refused here, before any of them reaches a query.
        claims.check_identifiers()?;

        let signature_bytes = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| malformed("signature is not unpadded base64url".to_owned()))?;
        let signature = <[u8; 64]>::try_from(signature_bytes.as_slice())
            .map(|bytes| Signature::from_bytes(&bytes))
            .map_err(|_| {
                malformed(format!(
                    "signature is {} bytes, an Ed25519 signature is 64",
                    signature_bytes.len()
                ))
            })?;
        Ok(Self {
            key_id,
            claims,
            signing_input_len: header_b64.len() + 1 + claims_b64.len(),
            signature,
            token: token.to_owned(),
        })
    }

    /// The `kid` header: which of the partner's enrolled keys to verify with.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The `iss` claim, NOT yet authenticated: only for finding the key.
    pub fn issuer(&self) -> &str {
        &self.claims.iss
    }

    /// The claims, NOT yet authenticated (for `--explain` output and logs of refusals).
    pub fn unverified_claims(&self) -> &ReportClaims {
        &self.claims
    }

    /// Checks the signature with the enrolled key (strict Ed25519: no small-order keys, no
    /// malleable signatures).
    pub fn verify_signature(self, key: &VerifyingKey) -> Result<VerifiedToken, TokenError> {
        let input = self
            .token
            .as_bytes()
            .get(..self.signing_input_len)
            .unwrap_or_default();
        key.verify_strict(input, &self.signature).map_err(|_| {
            TokenError::new(
                RejectReason::BadSignature,
                format!(
                    "signature does not verify with key {} of partner {}",
                    snippet(&self.key_id),
                    snippet(&self.claims.iss)
                ),
            )
        })?;
        Ok(VerifiedToken {
            claims: self.claims,
        })
    }
}

/// A token whose signature verified with an enrolled key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    claims: ReportClaims,
}

impl VerifiedToken {
    /// The authenticated claims (time and audience not necessarily checked yet).
    pub fn claims(&self) -> &ReportClaims {
        &self.claims
    }

    /// Audience, expiry, issue time (not in the future beyond the skew) and lifetime, at `now`.
    pub fn check_validity(
        &self,
        audience: &str,
        now: DateTime<Utc>,
    ) -> Result<&ReportClaims, TokenError> {
        check_validity(&self.claims, audience, now)?;
        Ok(&self.claims)
    }

    /// The claims, once every check passed.
    pub fn into_claims(self) -> ReportClaims {
        self.claims
    }
}

/// The time and audience checks on `claims` at `now` (see [`VerifiedToken::check_validity`]).
pub fn check_validity(
    claims: &ReportClaims,
    audience: &str,
    now: DateTime<Utc>,
) -> Result<(), TokenError> {
    if !claims.aud.contains(audience) {
        return Err(TokenError::new(
            RejectReason::WrongAudience,
            format!(
                "aud {} does not name this Waybill environment {}",
                match &claims.aud {
                    Audience::One(one) => snippet(one),
                    Audience::Many(many) => snippet(&many.join(",")),
                },
                snippet(audience)
            ),
        ));
    }
    let now = now.timestamp();
    if now >= claims.exp.saturating_add(MAX_SKEW_SECONDS) {
        return Err(TokenError::new(
            RejectReason::Expired,
            format!(
                "expired {} s ago (exp {}, {MAX_SKEW_SECONDS} s skew allowed)",
                now.saturating_sub(claims.exp),
                claims.exp
            ),
        ));
    }
    let not_before = claims.nbf.map_or(claims.iat, |nbf| nbf.max(claims.iat));
    if not_before > now.saturating_add(MAX_SKEW_SECONDS) {
        return Err(TokenError::new(
            RejectReason::IssuedInFuture,
            format!(
                "issued {} s in the future (iat {}); at most {MAX_SKEW_SECONDS} s clock skew is allowed",
                not_before.saturating_sub(now),
                claims.iat
            ),
        ));
    }
    let lifetime = claims.exp.saturating_sub(claims.iat);
    if lifetime <= 0 || lifetime > MAX_LIFETIME_SECONDS {
        return Err(TokenError::new(
            RejectReason::LifetimeTooLong,
            format!("exp - iat is {lifetime} s; it must be 1 to {MAX_LIFETIME_SECONDS} s"),
        ));
    }
    Ok(())
}
