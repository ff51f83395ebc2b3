//! Partners' enrolled keys this instance remembers, so that verifying a report's signature
//! costs no database round trip once its key has been seen.
//!
//! Only what cannot change is remembered: a key's public half, once enrolled, is never replaced
//! (keys are added under a new key id and revoked, never updated or deleted). Whether the key
//! may still sign is not remembered: the report's transaction reads it again
//! ([`crate::store::ReportOutcome::KeyRevoked`]), so a revocation applies to the next report as
//! before, and the revoked key is forgotten here. A key that is unknown or revoked when looked
//! up is not remembered at all. The cache is bounded: when full it starts over.

use std::{collections::HashMap, sync::Mutex};

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

#[cfg(test)]
mod tests {
    use waybill_token::SigningKey;

    use super::*;

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
