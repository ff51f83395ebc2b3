//! The credentials file: who may call, in which role, identified by the SHA-256 of an API key
//! or of a client certificate (or a client certificate's common name). Only hashes are held,
//! compared in constant time; no credential is ever logged or echoed. The file is re-read while
//! the listener serves (see [`super::reload`]).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::{
    caller::{Caller, Role},
    reload::{FileStamps, Reload, file_stamps},
};
use crate::text::quote;

/// One entry of the credentials file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    role: Role,
    /// Hex SHA-256 of the API key (`printf %s "$KEY" | sha256sum`).
    #[serde(default)]
    api_key_sha256: Option<String>,
    /// Hex SHA-256 of the client certificate's DER encoding
    /// (`openssl x509 -in client.pem -outform der | sha256sum`): pins one certificate.
    #[serde(default)]
    client_cert_sha256: Option<String>,
    /// The subject common name of client certificates (issued by the listener's client CA,
    /// which the handshake has verified): survives certificate renewal.
    #[serde(default)]
    client_cert_cn: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    callers: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Known {
    caller: Caller,
    api_key: Option<[u8; 32]>,
    client_cert: Option<[u8; 32]>,
    client_cn: Option<String>,
}

/// Who may call, from the credentials file (JSON):
///
/// ```json
/// {"callers": [
///   {"name": "shop-eu", "role": "storefront", "api_key_sha256": "<hex>"},
///   {"name": "ops-console", "role": "operator", "client_cert_sha256": "<hex>"},
///   {"name": "ops-team", "role": "operator", "client_cert_cn": "ops.example.com"}
/// ]}
/// ```
///
/// A set loaded from a file ([`Credentials::load`]) can be re-read while it serves
/// ([`Credentials::reload`]; the listener does it on SIGHUP and when the file changes): every
/// lookup reads the set in force at that moment, so new calls see a new version at once, and a
/// version that cannot be loaded is refused while the previous one stays.
#[derive(Debug)]
pub struct Credentials {
    /// The file it was loaded from (none when parsed from text).
    file: Option<PathBuf>,
    /// The callers in force.
    current: RwLock<Arc<Callers>>,
}

/// One version of the credentials file: who may call.
#[derive(Debug)]
struct Callers {
    known: Vec<Known>,
}

impl Clone for Credentials {
    /// A copy of the callers in force now, reloading from the same file.
    fn clone(&self) -> Self {
        Self {
            file: self.file.clone(),
            current: RwLock::new(self.callers()),
        }
    }
}

/// Why the credentials file was refused.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// It could not be read.
    #[error("cannot read credentials file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// It is not valid.
    #[error("credentials file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (never a credential).
        reason: String,
    },
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The hex SHA-256 of an API key: what the credentials file stores in `api_key_sha256`
/// (the same as `printf %s "$KEY" | sha256sum`).
pub fn hash_api_key(key: &str) -> String {
    hex::encode(sha256(key.as_bytes()))
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text.trim()).ok()?;
    bytes.try_into().ok()
}

impl Credentials {
    /// Reads and checks the credentials file.
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let callers = Callers::parse(&text).map_err(|reason| CredentialsError::Invalid {
            path: path.to_owned(),
            reason,
        })?;
        Ok(Self {
            file: Some(path.to_owned()),
            current: RwLock::new(Arc::new(callers)),
        })
    }

    /// Parses the credentials file's JSON (a set with no file: [`Credentials::reload`] keeps
    /// it as it is).
    pub fn parse(json: &str) -> Result<Self, String> {
        Ok(Self {
            file: None,
            current: RwLock::new(Arc::new(Callers::parse(json)?)),
        })
    }

    /// The file this set was loaded from.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// How many callers are in force.
    pub fn caller_count(&self) -> usize {
        self.callers().known.len()
    }

    /// Re-reads the file and puts the new version in force for every call from now on;
    /// returns its number of callers. A file that cannot be read or is not valid is refused
    /// and the callers in force stay (never "no credentials": nobody is let in by a broken
    /// file). A set parsed from text has no file and stays as it is.
    pub fn reload(&self) -> Result<usize, CredentialsError> {
        let Some(path) = &self.file else {
            return Ok(self.caller_count());
        };
        let fresh = Self::load(path)?.callers();
        let count = fresh.known.len();
        match self.current.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(count)
    }

    /// The callers in force now.
    fn callers(&self) -> Arc<Callers> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The caller an API key belongs to, among the callers in force.
    pub fn by_api_key(&self, key: &str) -> Option<Caller> {
        self.callers().by_api_key(key)
    }

    /// The caller a (handshake-verified) client certificate belongs to, among the callers in
    /// force: by its fingerprint first, then by its subject common name.
    pub fn by_client_cert(&self, der: &[u8]) -> Option<Caller> {
        self.callers().by_client_cert(der)
    }
}

impl Reload for Credentials {
    fn stamps(&self) -> FileStamps {
        file_stamps(self.file.as_deref())
    }

    fn reload_and_log(&self, why: &'static str) {
        let file = self.file.as_deref().unwrap_or(Path::new("-")).display();
        match self.reload() {
            // The count only: never a name's credential, nor a hash.
            Ok(callers) => info!(file = %file, callers, why, "credentials reloaded"),
            Err(error) => warn!(
                %error,
                why,
                "credentials reload refused; the previous credentials stay in force"
            ),
        }
    }
}

impl Callers {
    fn parse(json: &str) -> Result<Self, String> {
        let file: File = serde_json::from_str(json).map_err(|e| {
            // serde_json's message names the position, not the content.
            format!("not a valid credentials file: {e}")
        })?;
        let mut known = Vec::with_capacity(file.callers.len());
        for (index, entry) in file.callers.into_iter().enumerate() {
            let at = format!("callers[{index}] ({})", quote(&entry.name));
            if entry.name.trim().is_empty() || entry.name.len() > 128 {
                return Err(format!("{at}: name must be 1 to 128 characters"));
            }
            let api_key = match &entry.api_key_sha256 {
                Some(hash) => Some(
                    parse_hash(hash)
                        .ok_or_else(|| format!("{at}: api_key_sha256 must be 64 hex digits"))?,
                ),
                None => None,
            };
            let client_cert = match &entry.client_cert_sha256 {
                Some(hash) => Some(
                    parse_hash(hash)
                        .ok_or_else(|| format!("{at}: client_cert_sha256 must be 64 hex digits"))?,
                ),
                None => None,
            };
            let client_cn = entry.client_cert_cn.filter(|cn| !cn.trim().is_empty());
            if api_key.is_none() && client_cert.is_none() && client_cn.is_none() {
                return Err(format!(
                    "{at}: give api_key_sha256, client_cert_sha256 or client_cert_cn"
                ));
            }
            known.push(Known {
                caller: Caller {
                    name: entry.name.into(),
                    role: entry.role,
                },
                api_key,
                client_cert,
                client_cn,
            });
        }
        Ok(Self { known })
    }

    /// The caller an API key belongs to. Every entry is compared, in constant time, so the
    /// answer's timing tells nothing about which hash came close.
    fn by_api_key(&self, key: &str) -> Option<Caller> {
        let hash = sha256(key.as_bytes());
        let mut found = None;
        for known in &self.known {
            if let Some(expected) = &known.api_key
                && bool::from(expected.ct_eq(&hash))
                && found.is_none()
            {
                found = Some(known.caller.clone());
            }
        }
        found
    }

    /// The caller a (handshake-verified) client certificate belongs to: by its fingerprint
    /// first, then by its subject common name.
    fn by_client_cert(&self, der: &[u8]) -> Option<Caller> {
        let hash = sha256(der);
        let pinned = self.known.iter().find(|known| {
            known
                .client_cert
                .as_ref()
                .is_some_and(|expected| bool::from(expected.ct_eq(&hash)))
        });
        if let Some(known) = pinned {
            return Some(known.caller.clone());
        }
        let cn = common_name(der)?;
        self.known
            .iter()
            .find(|known| known.client_cn.as_deref() == Some(cn.as_str()))
            .map(|known| known.caller.clone())
    }
}

/// The subject common name of a DER certificate, if it has exactly one.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = cert.subject().iter_common_name();
    let first = names.next()?.as_str().ok()?.to_owned();
    names.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(keys: &[&str]) -> String {
        let callers: Vec<String> = keys
            .iter()
            .map(|key| {
                format!(
                    r#"{{"name":"{key}","role":"storefront","api_key_sha256":"{}"}}"#,
                    hash_api_key(key)
                )
            })
            .collect();
        format!(r#"{{"callers":[{}]}}"#, callers.join(","))
    }

    #[test]
    fn a_reload_puts_the_new_file_in_force_and_refuses_a_broken_one() {
        let path = std::env::temp_dir().join(format!("waybill-creds-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, file_of(&["a"])).expect("write");
        let credentials = Credentials::load(&path).expect("valid");
        let copy = credentials.clone();
        assert!(credentials.by_api_key("b").is_none());

        std::fs::write(&path, file_of(&["a", "b"])).expect("write");
        assert_eq!(credentials.reload().expect("valid"), 2);
        assert!(credentials.by_api_key("b").is_some());
        assert!(copy.by_api_key("b").is_none(), "a clone is a copy");

        for broken in [
            "{\"callers\": [".to_owned(),
            r#"{"callers":[{"name":"a","role":"storefront","api_key_sha256":"00"}]}"#.to_owned(),
            r#"{"callers":[]"#.to_owned(),
        ] {
            std::fs::write(&path, &broken).expect("write");
            assert!(credentials.reload().is_err(), "{broken}");
            assert_eq!(credentials.caller_count(), 2, "the previous callers stay");
            assert!(credentials.by_api_key("a").is_some());
            assert!(credentials.by_api_key("b").is_some());
        }
        std::fs::remove_file(&path).expect("remove");
        assert!(matches!(
            credentials.reload(),
            Err(CredentialsError::Read { .. })
        ));
        assert_eq!(
            credentials.caller_count(),
            2,
            "a missing file changes nothing"
        );

        let parsed = Credentials::parse(&file_of(&["a"])).expect("valid");
        assert_eq!(parsed.reload().expect("no file"), 1);
    }

    #[test]
    fn client_certificates_map_by_fingerprint_then_common_name() {
        let key = rcgen_free_cert("shop.example.com");
        let c = Credentials::parse(&format!(
            r#"{{"callers":[
                {{"name":"pinned","role":"operator","client_cert_sha256":"{}"}},
                {{"name":"by-cn","role":"storefront","client_cert_cn":"shop.example.com"}}
            ]}}"#,
            hex::encode(sha256(&key))
        ))
        .expect("valid");
        assert_eq!(
            c.by_client_cert(&key).map(|c| c.name),
            Some("pinned".into())
        );
        let c = Credentials::parse(
            r#"{"callers":[{"name":"by-cn","role":"storefront","client_cert_cn":"shop.example.com"}]}"#,
        )
        .expect("valid");
        assert_eq!(
            c.by_client_cert(&key).map(|c| c.role),
            Some(Role::Storefront)
        );
        assert_eq!(
            c.by_client_cert(&rcgen_free_cert("other.example.com")),
            None
        );
        assert_eq!(c.by_client_cert(b"not a certificate"), None);
    }

    /// A self-signed certificate with common name `cn` (DER), made with the test PKI's tool.
    fn rcgen_free_cert(cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn the_file_is_checked() {
        for bad in [
            r#"{"callers":[{"name":"x","role":"storefront"}]}"#,
            r#"{"callers":[{"name":"x","role":"admin","api_key_sha256":"00"}]}"#,
            r#"{"callers":[{"name":"x","role":"storefront","api_key_sha256":"zz"}]}"#,
            r#"{"callers":[{"name":"","role":"storefront","api_key_sha256":"00"}]}"#,
        ] {
            assert!(Credentials::parse(bad).is_err(), "{bad}");
        }
    }
}
