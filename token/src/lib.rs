//! Partners' signed status-report tokens, shared by StatusIngest and the connector SDK.
//!
//! A report token is a compact JWS (a JWT) signed with EdDSA over Ed25519 (RFC 8037), with an
//! explicit type `typ: "wb-report+jwt"` (RFC 8725) and `kid` = the key id the partner enrolled
//! through `DispatchAdmin.AddPartnerKey`. Its claims bind the report it travels with:
//!
//! | claim | value |
//! | --- | --- |
//! | `iss` | partner id |
//! | `sub` | order id (the correlation id of the Kafka message) |
//! | `aud` | the Waybill environment it is for (e.g. `waybill-production`): a sandbox token is refused in production |
//! | `iat`, `exp` | issue and expiry time, integer Unix seconds; `exp - iat` ≤ 300 |
//! | `jti` | unique token id: accepted once |
//! | `report_id` | the partner's id of this report: a repeated report id is a duplicate |
//! | `status` | `RECEIVED_BY_PARTNER`, `SHIPPED`, `DELIVERED`, `EXCEPTION` or `REJECTED_BY_PARTNER` |
//! | `tracking_id` | the tracking id reported (`""` when none) |
//! | `detail` | the detail text reported, exactly (`""` when none) |
//! | `detail_code` | the detail code reported (`""` when none) |
//! | `action_required` | the request's `action_required`, a JSON boolean (`false` when not) |
//! | `occurred_at` | when it happened, RFC 3339 (`2026-11-22T10:15:00Z`) |
//!
//! Every field of the request the partner says is one of these claims, so nothing of a report
//! travels unsigned. `tracking_id`, `detail`, `detail_code` and `action_required` may be left
//! out (or `null`) when the request's field is empty (`false`); when given they must equal the
//! request's field exactly — code point for code point, no trimming or normalisation
//! ([`claims`] has the rules). `kid`, `iss` and `jti` are refused as malformed when empty, too
//! long (64, 64 and 128 bytes) or holding a control character such as NUL.
//!
//! Verification pins the algorithm (`EdDSA`, or its RFC 9864 alias `Ed25519`), refuses every
//! key-carrying header (`jwk`, `jku`, `x5u`, `x5c`) and `crit`, verifies strictly
//! (`ed25519-dalek`'s `verify_strict`), allows at most [`MAX_SKEW_SECONDS`] of clock skew
//! either way and a lifetime of at most [`MAX_LIFETIME_SECONDS`]. Every function that needs the
//! time takes `now`: nothing here reads a clock, and nothing installs process-wide state, so a
//! partner's program can embed it freely.
//!
//! Layout: [`checks`] (the ordered checks, walked by StatusIngest and by `--explain` alike),
//! [`jws`] (signing, parsing and the checks, as separate steps so a verifier looks the
//! key up between parsing and the signature), [`claims`] (what a token says and how each claim
//! is bound to the request), [`keys`] (key files), [`error`] (the [`RejectReason`] of each
//! check).
//!
//! # Signing a token in a partner's own language
//!
//! Nothing of ours is needed: any JWT library with EdDSA does it. The private key is the PKCS#8
//! PEM file `openssl genpkey -algorithm ed25519 -out key.pem` (or `waybill keys generate`)
//! writes; `now` is Unix seconds.
//!
//! Python (`pip install 'PyJWT[crypto]'`):
//!
//! ```python
//! import jwt, time, uuid
//! now = int(time.time())
//! token = jwt.encode(
//!     {"iss": "acme", "sub": order_id, "aud": "waybill-production", "iat": now, "exp": now + 120,
//!      "jti": str(uuid.uuid4()), "report_id": "r-1", "status": "SHIPPED",
//!      "tracking_id": "1Z999", "detail": "left the depot", "detail_code": "",
//!      "action_required": False, "occurred_at": "2026-11-22T10:15:00Z"},
//!     open("key.pem").read(), algorithm="EdDSA", headers={"kid": "acme-2026", "typ": "wb-report+jwt"})
//! ```
//!
//! Go (`github.com/golang-jwt/jwt/v5`):
//!
//! ```go
//! key, _ := jwt.ParseEdPrivateKeyFromPEM(pemBytes)
//! t := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{
//!     "iss": "acme", "sub": orderID, "aud": "waybill-production", "iat": now, "exp": now + 120,
//!     "jti": uuid.NewString(), "report_id": "r-1", "status": "SHIPPED",
//!     "tracking_id": "1Z999", "detail": "left the depot", "detail_code": "",
//!     "action_required": false, "occurred_at": "2026-11-22T10:15:00Z"})
//! t.Header["kid"], t.Header["typ"] = "acme-2026", "wb-report+jwt"
//! token, _ := t.SignedString(key)
//! ```
//!
//! Java (`com.nimbusds:nimbus-jose-jwt` with Tink for Ed25519; `jwk` is an `OctetKeyPair`):
//!
//! ```java
//! var header = new JWSHeader.Builder(JWSAlgorithm.EdDSA).keyID("acme-2026")
//!     .type(new JOSEObjectType("wb-report+jwt")).build();
//! var claims = new JWTClaimsSet.Builder().issuer("acme").subject(orderId).audience("waybill-production")
//!     .issueTime(now).expirationTime(Date.from(now.toInstant().plusSeconds(120)))
//!     .jwtID(UUID.randomUUID().toString()).claim("report_id", "r-1").claim("status", "SHIPPED")
//!     .claim("tracking_id", "1Z999").claim("detail", "left the depot").claim("detail_code", "")
//!     .claim("action_required", false).claim("occurred_at", "2026-11-22T10:15:00Z").build();
//! var jwt = new SignedJWT(header, claims); jwt.sign(new Ed25519Signer(jwk));
//! String token = jwt.serialize();
//! ```
//!
//! Node (`jose`):
//!
//! ```js
//! const key = await importPKCS8(fs.readFileSync("key.pem", "utf8"), "EdDSA");
//! const token = await new SignJWT({ report_id: "r-1", status: "SHIPPED", tracking_id: "1Z999",
//!     detail: "left the depot", detail_code: "", action_required: false,
//!     occurred_at: "2026-11-22T10:15:00Z" })
//!   .setProtectedHeader({ alg: "EdDSA", kid: "acme-2026", typ: "wb-report+jwt" })
//!   .setIssuer("acme").setSubject(orderId).setAudience("waybill-production")
//!   .setIssuedAt().setExpirationTime("2m").setJti(crypto.randomUUID()).sign(key);
//! ```
//!
//! Sign a fresh token (new `jti`) for every attempt, retries included: a re-sent token is a
//! replay and is refused, while a repeated `report_id` is answered as a harmless duplicate.
//!
//! # Verifying
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use ed25519_dalek::SigningKey;
//! use waybill_token::{ParsedToken, Report, ReportClaims, TokenSigner};
//!
//! let now = Utc.with_ymd_and_hms(2026, 11, 22, 10, 15, 0).unwrap();
//! let signer = TokenSigner::new(SigningKey::from_bytes(&[7; 32]), "acme-2026");
//! let report = Report {
//!     partner_id: "acme".into(), order_id: "0193...".into(), report_id: "r-1".into(),
//!     status: "SHIPPED".into(), tracking_id: "1Z999".into(), detail: "left the depot".into(),
//!     detail_code: String::new(), action_required: false, occurred_at: now,
//! };
//! let token = signer.sign(&ReportClaims::new(&report, "waybill-production", now, 120, "t-1"));
//!
//! let parsed = ParsedToken::parse(&token)?;             // form, typ, alg, headers
//! // look up the key enrolled as (parsed.issuer(), parsed.key_id()), refuse if revoked
//! let verified = parsed.verify_signature(&signer.verifying_key())?;
//! verified.check_validity("waybill-production", now)?;  // aud, exp, iat, lifetime
//! verified.claims().check_bound_to(&report)?;           // every bound claim = the request
//! # Ok::<(), waybill_token::TokenError>(())
//! ```

pub mod checks;
pub mod claims;
pub mod error;
pub mod jws;
pub mod keys;

pub use ed25519_dalek::{SigningKey, VerifyingKey};

pub use crate::{
    checks::{Check, EnrolledKey, KeyRefusal, VerifiedReport, explain_report, verify_report},
    error::{KeyError, RejectReason, TokenError},
    jws::{
        ALGORITHM, Audience, MAX_LIFETIME_SECONDS, MAX_SKEW_SECONDS, MAX_TOKEN_BYTES, ParsedToken,
        Report, ReportClaims, TOKEN_TYPE, TokenSigner, VerifiedToken, check_validity,
    },
};

/// Every check at once, for a verifier that already holds the one key (the connector SDK's
/// tests, `waybill token verify`): form → signature → audience and time → binding to `report`.
pub fn verify(
    token: &str,
    key: &VerifyingKey,
    audience: &str,
    report: &Report,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<ReportClaims, TokenError> {
    let verified = ParsedToken::parse(token)?.verify_signature(key)?;
    verified.check_validity(audience, now)?;
    verified.claims().check_bound_to(report)?;
    Ok(verified.into_claims())
}
