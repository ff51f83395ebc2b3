//! Authenticated page tokens: a cursor a service hands out and takes back, sealed with
//! HMAC-SHA256 under a server key, so a forged or altered token is refused before any of its
//! fields is believed.
//!
//! A token is `base64url(payload ‖ tag)` where `tag = HMAC-SHA256(key, purpose ‖ 0 ‖
//! len(context) ‖ context ‖ payload)`. The purpose (e.g. `waybill.orders.list.v2`) keeps a
//! token of one RPC from being replayed to another; the context (e.g. the customer id) binds it
//! to the request it continues without being carried in it.
//!
//! Every instance behind one load balancer must share the key (`--page-token-key`,
//! `--page-token-key-file`); without one a random per-process key is used, and tokens then
//! stop working across a restart or another instance (callers start again from the first page).

use std::path::PathBuf;

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secrets::{self, SecretFileError};

/// Length of the authentication tag.
const TAG_BYTES: usize = 32;
/// Shortest accepted key.
pub const MIN_KEY_BYTES: usize = 32;
/// Longest token [`PageTokenKey::open`] looks at; anything longer is refused unread.
pub const MAX_TOKEN_CHARS: usize = 512;

/// The server key page tokens are sealed with.
#[derive(Clone)]
pub struct PageTokenKey {
    key: Vec<u8>,
    /// Whether the key was generated for this process only.
    ephemeral: bool,
}

impl std::fmt::Debug for PageTokenKey {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageTokenKey")
            .field("ephemeral", &self.ephemeral)
            .finish_non_exhaustive()
    }
}

/// Why a page-token key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PageTokenKeyError {
    /// The key text is neither hex nor base64 of at least [`MIN_KEY_BYTES`] bytes.
    #[error(
        "the page-token key must be at least {MIN_KEY_BYTES} bytes, written as hex or base64 (e.g. `openssl rand -hex 32`)"
    )]
    Malformed,
    /// Both a key and a key file were given.
    #[error("give --page-token-key or --page-token-key-file, not both")]
    Both,
    /// The key file could not be read safely.
    #[error(transparent)]
    File(#[from] SecretFileError),
}

impl PageTokenKey {
    /// A key from raw bytes (at least [`MIN_KEY_BYTES`]).
    pub fn from_bytes(key: &[u8]) -> Result<Self, PageTokenKeyError> {
        if key.len() < MIN_KEY_BYTES {
            return Err(PageTokenKeyError::Malformed);
        }
        Ok(Self {
            key: key.to_vec(),
            ephemeral: false,
        })
    }

    /// A key from its text form: hex, or standard or URL-safe base64.
    pub fn parse(text: &str) -> Result<Self, PageTokenKeyError> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .or_else(|| STANDARD.decode(text).ok())
            .or_else(|| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok())
            .ok_or(PageTokenKeyError::Malformed)?;
        Self::from_bytes(&bytes)
    }

    /// A fresh random key for this process only (development: tokens do not survive a restart
    /// and are not accepted by another instance).
    pub fn random() -> Self {
        let key: [u8; 32] = rand::random();
        Self {
            key: key.to_vec(),
            ephemeral: true,
        }
    }

    /// Whether this key was generated for this process only.
    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }

    fn tag(&self, purpose: &str, context: &[u8], payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("hmac takes any key length");
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(&(context.len() as u64).to_be_bytes());
        mac.update(context);
        mac.update(payload);
        mac
    }

    /// Seals `payload` for `purpose`, bound to `context`.
    pub fn seal(&self, purpose: &str, context: &[u8], payload: &[u8]) -> String {
        let tag = self.tag(purpose, context, payload).finalize().into_bytes();
        let mut bytes = Vec::with_capacity(payload.len() + TAG_BYTES);
        bytes.extend_from_slice(payload);
        bytes.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The payload of a token this key sealed for the same `purpose` and `context`; `None` for
    /// anything else (too long, not base64, too short, forged, altered, or issued for another
    /// purpose or context). The tag is compared in constant time.
    pub fn open(&self, purpose: &str, context: &[u8], token: &str) -> Option<Vec<u8>> {
        if token.len() > MAX_TOKEN_CHARS {
            return None;
        }
        let mut bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        let split = bytes.len().checked_sub(TAG_BYTES)?;
        let tag = bytes.split_off(split);
        self.tag(purpose, context, &bytes)
            .verify_slice(&tag)
            .ok()
            .map(|()| bytes)
    }
}

/// Page-token key settings, shared by every service that pages (flattened into its flags).
#[derive(Clone, Default, clap::Args)]
pub struct PageTokenArgs {
    /// Key that authenticates page tokens (hex or base64, at least 32 bytes; e.g. `openssl
    /// rand -hex 32`). Every instance of a service must share it. Unset (and no key file): a
    /// random key per process, so page tokens do not survive a restart or reach another
    /// instance — fine for development only. Prefer the environment variable or the file: a
    /// flag's value is visible in the process list.
    #[arg(long, env = "WAYBILL_PAGE_TOKEN_KEY", hide_env_values = true)]
    pub page_token_key: Option<String>,
    /// File holding the page-token key (same format); must not be readable by group or others.
    #[arg(long, env = "WAYBILL_PAGE_TOKEN_KEY_FILE")]
    pub page_token_key_file: Option<PathBuf>,
}

impl std::fmt::Debug for PageTokenArgs {
    // The key is a secret: never printed, only whether it is set.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageTokenArgs")
            .field(
                "page_token_key",
                &self.page_token_key.as_ref().map(|_| "<redacted>"),
            )
            .field("page_token_key_file", &self.page_token_key_file)
            .finish()
    }
}

impl PageTokenArgs {
    /// The configured key, or a random per-process one when none is configured.
    pub fn load(&self) -> Result<PageTokenKey, PageTokenKeyError> {
        match (&self.page_token_key, &self.page_token_key_file) {
            (Some(_), Some(_)) => Err(PageTokenKeyError::Both),
            (Some(text), None) => PageTokenKey::parse(text),
            (None, Some(path)) => {
                let bytes = secrets::read_private_file(path)?;
                let text = String::from_utf8(bytes).map_err(|_| PageTokenKeyError::Malformed)?;
                PageTokenKey::parse(&text)
            }
            (None, None) => Ok(PageTokenKey::random()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> PageTokenKey {
        PageTokenKey::from_bytes(&[byte; 32]).expect("32 bytes")
    }

    #[test]
    fn round_trips_for_the_same_purpose_and_context_only() {
        let token = key(1).seal("p", b"ctx", b"payload");
        assert_eq!(
            key(1).open("p", b"ctx", &token).as_deref(),
            Some(&b"payload"[..])
        );
        assert_eq!(key(1).open("q", b"ctx", &token), None);
        assert_eq!(key(1).open("p", b"ctx2", &token), None);
        assert_eq!(key(2).open("p", b"ctx", &token), None, "another key");
    }

    #[test]
    fn altered_or_garbage_tokens_are_refused() {
        let token = key(1).seal("p", b"c", b"payload");
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).expect("base64");
        bytes[0] ^= 1;
        assert_eq!(
            key(1).open("p", b"c", &URL_SAFE_NO_PAD.encode(&bytes)),
            None
        );
        for garbage in ["", "!!", "AAAA", &"A".repeat(MAX_TOKEN_CHARS + 1)] {
            assert_eq!(key(1).open("p", b"c", garbage), None, "{garbage}");
        }
    }

    #[test]
    fn context_length_is_part_of_the_tag() {
        // ("ab", "c…") and ("a", "bc…") must not collide.
        let token = key(1).seal("p", b"ab", b"cd");
        assert_eq!(key(1).open("p", b"a", &token), None);
    }

    #[test]
    fn keys_parse_from_hex_or_base64_and_must_be_long_enough() {
        let hex_key = "00".repeat(32);
        assert!(PageTokenKey::parse(&hex_key).is_ok());
        assert!(PageTokenKey::parse(&STANDARD.encode([7u8; 32])).is_ok());
        assert!(PageTokenKey::parse(&URL_SAFE_NO_PAD.encode([7u8; 40])).is_ok());
        assert!(matches!(
            PageTokenKey::parse("abcd"),
            Err(PageTokenKeyError::Malformed)
        ));
        assert!(!format!("{:?}", key(9)).contains('9'), "never printed");
        let args = PageTokenArgs {
            page_token_key: Some(hex_key.clone()),
            page_token_key_file: None,
        };
        assert!(!format!("{args:?}").contains(&hex_key), "never printed");
    }
}
