//! Partners' enrolled keys this instance remembers, so that verifying a report's signature
//! costs no database round trip once its key has been seen; and when it last wrote that a key
//! was used ([`KeyUse`]).
//!
//! Only what cannot change is remembered: a key's public half, once enrolled, is never replaced
//! (keys are added under a new key id and revoked, never updated or deleted). Whether the key
//! may still sign is not remembered: the report's transaction reads it again
//! ([`crate::store::ReportOutcome::KeyRevoked`]), so a revocation applies to the next report as
//! before, and the revoked key is forgotten here. A key that is unknown or revoked when looked
//! up is not remembered at all. The cache is bounded: when full it starts over.

use std::{collections::HashMap, sync::Mutex};

use chrono::{DateTime, Duration, Utc};
use waybill_token::VerifyingKey;

/// Keys remembered at most (a few per partner: thousands of partners).
pub const MAX_KEYS: usize = 4096;

/// Verifying keys by `(partner id, key id)`.
#[derive(Debug, Default)]
pub struct KeyCache {
    keys: Mutex<HashMap<(String, String), VerifyingKey>>,
}

impl KeyCache {
    /// The key `key_id` of `partner_id`, if remembered.
    pub fn get(&self, partner_id: &str, key_id: &str) -> Option<VerifyingKey> {
        self.lock()
            .get(&(partner_id.to_owned(), key_id.to_owned()))
            .copied()
    }

    /// Remembers an enrolled key that is not revoked.
    pub fn remember(&self, partner_id: &str, key_id: &str, key: VerifyingKey) {
        let mut keys = self.lock();
        if keys.len() >= MAX_KEYS {
            keys.clear();
        }
        keys.insert((partner_id.to_owned(), key_id.to_owned()), key);
    }

    /// Forgets a key (it was found revoked).
    pub fn forget(&self, partner_id: &str, key_id: &str) {
        self.lock()
            .remove(&(partner_id.to_owned(), key_id.to_owned()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), VerifyingKey>> {
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How often, at most, this instance writes that a key was used.
pub fn key_use_interval() -> Duration {
    Duration::minutes(1)
}

/// When this instance last wrote each key's `last_used_at` (`partner_keys`, shown by
/// `ListPartnerKeys` so an operator sees an old key is unused before revoking it).
///
/// A report accepted with a key writes its time only if this instance has not written one for
/// that key in the last [`key_use_interval`]: at most one write a minute per key and instance,
/// however many reports, in a statement of its own after the report's commit. So the reports'
/// transactions never lock the key's row (every report of a partner would queue on it, across
/// instances), and the time shown is at most a minute behind the latest use — enough to tell a
/// key still in use from one that is not. Bounded like [`KeyCache`].
#[derive(Debug, Default)]
pub struct KeyUse {
    written: Mutex<HashMap<(String, String), DateTime<Utc>>>,
}

impl KeyUse {
    /// Whether a use of `key_id` of `partner_id` at `now` is to be written; if so, it counts
    /// as written from now on.
    pub fn due(&self, partner_id: &str, key_id: &str, now: DateTime<Utc>) -> bool {
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (partner_id.to_owned(), key_id.to_owned());
        if written
            .get(&key)
            .is_some_and(|last| now - *last < key_use_interval())
        {
            return false;
        }
        if written.len() >= MAX_KEYS {
            written.clear();
        }
        written.insert(key, now);
        true
    }

    /// The write for the key failed: the next use tries again.
    pub fn failed(&self, partner_id: &str, key_id: &str) {
        self.written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&(partner_id.to_owned(), key_id.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use waybill_token::SigningKey;

    use super::*;

    #[test]
    fn a_key_use_is_written_at_most_once_a_minute_per_key() {
        let at = |seconds: i64| {
            Utc.timestamp_opt(1_800_000_000 + seconds, 0)
                .single()
                .unwrap_or_default()
        };
        let uses = KeyUse::default();
        assert!(uses.due("acme", "k1", at(0)), "the first use is written");
        assert!(
            !uses.due("acme", "k1", at(59)),
            "not again within the minute"
        );
        assert!(uses.due("acme", "k2", at(59)), "another key is its own");
        assert!(uses.due("globex", "k1", at(59)), "another partner's too");
        assert!(uses.due("acme", "k1", at(60)), "a minute later, again");
        assert!(!uses.due("acme", "k1", at(61)));
        uses.failed("acme", "k1");
        assert!(
            uses.due("acme", "k1", at(62)),
            "a failed write is tried again"
        );
    }

    fn key(seed: u8) -> VerifyingKey {
        SigningKey::from_bytes(&[seed; 32]).verifying_key()
    }

    #[test]
    fn remembers_per_partner_and_key_id_and_forgets() {
        let cache = KeyCache::default();
        cache.remember("acme", "k1", key(1));
        assert_eq!(cache.get("acme", "k1"), Some(key(1)));
        assert_eq!(cache.get("acme", "k2"), None);
        assert_eq!(cache.get("globex", "k1"), None);
        cache.forget("acme", "k1");
        assert_eq!(cache.get("acme", "k1"), None);
    }

    #[test]
    fn is_bounded() {
        let cache = KeyCache::default();
        for n in 0..=MAX_KEYS {
            cache.remember("acme", &n.to_string(), key(1));
        }
        assert!(cache.lock().len() <= MAX_KEYS);
        assert_eq!(cache.get("acme", &MAX_KEYS.to_string()), Some(key(1)));
    }
}
