//! TLS for a listener: certificate chain and private key from PEM files, optional client
//! certificate verification (mTLS) against a CA bundle, and reloading on SIGHUP or when the
//! files change (checked every [`FILE_CHECK_INTERVAL`]) without dropping connections: see
//! [`super::reload`], which re-reads the credentials file the same way.
//!
//! We terminate TLS ourselves (tokio-rustls, the library tonic uses) instead of tonic's
//! `ServerTlsConfig`, because tonic's configuration is fixed at start: here every new connection
//! takes the configuration current at its accept, so a reload affects new connections only and
//! established ones keep their session.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use super::reload::{Reload, file_stamps};
use crate::secrets::{self, SecretFileError};

pub use super::reload::{FILE_CHECK_INTERVAL, FileStamps};

/// Where a listener's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); must not be readable by group or others.
    pub key: PathBuf,
    /// PEM CA bundle: when set, a client certificate must have been issued by one of these
    /// (mTLS); any other is refused at the handshake.
    pub client_ca: Option<PathBuf>,
    /// Whether a client must present a certificate at all when `client_ca` is set.
    pub client_certs: ClientCerts,
}

/// Whether an mTLS listener requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ClientCerts {
    /// Every connection presents a certificate the client CA issued; others are refused at the
    /// handshake.
    #[default]
    Required,
    /// A connection may present no certificate (its calls then carry an API key); one it does
    /// present must still be issued by the client CA, or the handshake fails. For a listener
    /// shared by certificate-holding operators and API-key storefronts.
    Optional,
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The private key file is unsafe or unreadable.
    #[error(transparent)]
    KeyFile(#[from] SecretFileError),
    /// A file holds no usable PEM item of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the file's content).
        what: &'static str,
    },
    /// rustls refused the combination (e.g. a key that does not match the certificate).
    #[error("tls configuration refused: {0}")]
    Config(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::Pem {
            path: path.to_owned(),
            what: "is not a PEM certificate file",
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "holds no certificate",
        });
    }
    Ok(certs)
}

/// Builds the rustls configuration from `files` (reading them now).
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key_pem = secrets::read_private_file(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Pem {
        path: files.key.clone(),
        what: "holds no PEM private key",
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            if files.client_certs == ClientCerts::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A listener's TLS acceptor that can be reloaded while serving.
#[derive(Clone)]
pub struct ReloadableTls {
    files: TlsFiles,
    current: Arc<RwLock<TlsAcceptor>>,
}

impl std::fmt::Debug for ReloadableTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadableTls {
    /// Loads `files` now (start-up fails on bad material).
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&files)?));
        Ok(Self {
            files,
            current: Arc::new(RwLock::new(acceptor)),
        })
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_cert(&self) -> bool {
        self.files.client_ca.is_some() && self.files.client_certs == ClientCerts::Required
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the files; on error the previous configuration stays in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&self.files)?));
        match self.current.write() {
            Ok(mut guard) => *guard = acceptor,
            Err(poisoned) => *poisoned.into_inner() = acceptor,
        }
        Ok(())
    }

    /// The files' current stamps.
    pub fn stamps(&self) -> FileStamps {
        file_stamps(
            [
                Some(&self.files.cert),
                Some(&self.files.key),
                self.files.client_ca.as_ref(),
            ]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path),
        )
    }

    /// Reloads if the files changed since `seen` (updated to the current stamps); `None` when
    /// nothing changed.
    pub fn reload_if_changed(&self, seen: &mut FileStamps) -> Option<Result<(), TlsError>> {
        let now = self.stamps();
        if now == *seen {
            return None;
        }
        *seen = now;
        Some(self.reload())
    }
}

impl Reload for ReloadableTls {
    fn stamps(&self) -> FileStamps {
        ReloadableTls::stamps(self)
    }

    fn reload_and_log(&self, why: &'static str) {
        match self.reload() {
            Ok(()) => info!(cert = %self.files.cert.display(), why, "tls certificate reloaded"),
            Err(error) => {
                warn!(%error, why, "tls reload failed; keeping the previous certificate")
            }
        }
    }
}
