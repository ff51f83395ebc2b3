//! Transport security and caller identity for every Waybill listener, set up the same way by
//! every service:
//!
//! - [`tls`]: certificate and key from files, optional mTLS;
//! - [`incoming`]: the accepted connections (plain or TLS) and what is known about each peer;
//! - [`caller`]: who is calling (a [`Caller`] and its [`Role`]);
//! - [`credentials`]: the credentials file (API keys or client certificates mapped to roles);
//! - [`auth`]: the one layer that decides who may call what and writes the operators' audit
//!   trail;
//! - [`reload`]: re-reading the TLS files and the credentials file on SIGHUP and when they
//!   change, in one task per listener;
//! - [`rate_limit`]: per-caller limits on the RPCs that create work.
//!
//! [`SecurityArgs`] are the flags every service takes; [`SecurityArgs::load`] turns them into a
//! [`ServerSecurity`] and refuses a production listener that anyone on the network could reach
//! without TLS and credentials, unless `--insecure` says so.

pub mod auth;
pub mod caller;
pub mod credentials;
pub mod incoming;
pub mod rate_limit;
pub mod reload;
pub mod tls;

use std::{
    net::SocketAddr,
    num::{NonZeroU32, NonZeroUsize},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use tracing::warn;

use crate::in_flight::DEFAULT_MAX_CALLS_IN_FLIGHT;

pub use self::{
    caller::{Caller, Role},
    credentials::Credentials,
    rate_limit::RateLimit,
    reload::Reloader,
    tls::{ClientCerts, ReloadableTls, TlsFiles},
};

/// How one server protects itself. The default (no TLS, no credentials, no rate limit) is for
/// development on loopback and for tests.
#[derive(Debug, Clone, Default)]
pub struct ServerSecurity {
    /// TLS; plaintext when unset.
    pub tls: Option<ReloadableTls>,
    /// Who may call; every call is let through when unset. Loaded from a file, it is re-read
    /// on SIGHUP and when the file changes.
    pub credentials: Option<Arc<Credentials>>,
    /// Per-caller limit on `PlaceOrder` / `ReportStatus`.
    pub rate_limit: Option<RateLimit>,
}

/// Whether a service's callers need credentials (StatusIngest's partners sign their reports
/// instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerAuth {
    /// Storefronts or operators: a credentials file is required off loopback.
    Required,
    /// Open at the transport level (StatusIngest).
    InCall,
}

/// Security flags of a production service (each with an environment fallback).
#[derive(Debug, Clone, clap::Args)]
pub struct SecurityArgs {
    /// PEM certificate chain served on the listener (TLS is on when this and --tls-key are set).
    #[arg(long, env = "WAYBILL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert; must not be readable by group or others. Certificate and
    /// key are re-read on SIGHUP (new connections get the new ones; open ones stay up).
    #[arg(long, env = "WAYBILL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it issued (mTLS); any other is
    /// refused at the handshake.
    #[arg(long, env = "WAYBILL_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca: `required` (every client presents a certificate) or `optional`
    /// (clients without one identify themselves with an API key; a certificate presented must
    /// still come from the client CA).
    #[arg(
        long,
        env = "WAYBILL_TLS_CLIENT_CERT",
        value_enum,
        default_value_t,
        requires = "tls_client_ca"
    )]
    pub tls_client_cert: ClientCerts,
    /// JSON file of the callers allowed in: name, role (storefront or operator) and the SHA-256
    /// of an API key and/or of a client certificate (see the README). Re-read on SIGHUP and
    /// when it changes (checked every 30 s): new calls are checked against the new callers at
    /// once; a file that cannot be loaded is refused with a warning and the previous callers
    /// stay in force. Without it every call is let through (development only).
    #[arg(long, env = "WAYBILL_CREDENTIALS_FILE")]
    pub credentials_file: Option<PathBuf>,
    /// Serve a non-loopback address without TLS or without credentials anyway (e.g. behind a
    /// proxy that does both). Logged loudly.
    #[arg(long, env = "WAYBILL_INSECURE")]
    pub insecure: bool,
    /// Sustained PlaceOrder / ReportStatus calls per second allowed to one caller. A caller is
    /// a whole storefront (or one partner address), so the default stops a runaway client,
    /// not a busy shop: set it to what each caller is expected to send.
    #[arg(long, env = "WAYBILL_RATE_LIMIT", default_value = "5000")]
    pub rate_limit: NonZeroU32,
    /// Calls one caller may make at once above the sustained rate.
    #[arg(long, env = "WAYBILL_RATE_BURST", default_value = "10000")]
    pub rate_burst: NonZeroU32,
    /// Calls the server holds at once over all its connections (besides 256 on any one);
    /// past it a call is refused at once with RESOURCE_EXHAUSTED and counted as
    /// `refused{reason="overloaded"}`. Health checks are never refused. Each call held costs
    /// memory: the bound keeps a flood of callers from taking more than the process has.
    #[arg(long, env = "WAYBILL_MAX_CALLS_IN_FLIGHT", default_value_t = default_max_calls_in_flight())]
    pub max_calls_in_flight: NonZeroUsize,
}

impl Default for SecurityArgs {
    /// No TLS, no credentials, the default rate limit (as with no flags given).
    fn default() -> Self {
        Self {
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_client_cert: ClientCerts::Required,
            credentials_file: None,
            insecure: false,
            rate_limit: NonZeroU32::new(5000).unwrap_or(NonZeroU32::MIN),
            rate_burst: NonZeroU32::new(10_000).unwrap_or(NonZeroU32::MIN),
            max_calls_in_flight: default_max_calls_in_flight(),
        }
    }
}

/// [`DEFAULT_MAX_CALLS_IN_FLIGHT`] as the flag's type.
fn default_max_calls_in_flight() -> NonZeroUsize {
    NonZeroUsize::new(DEFAULT_MAX_CALLS_IN_FLIGHT).unwrap_or(NonZeroUsize::MIN)
}

/// Why a service's security settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The credentials file could not be loaded.
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialsError),
    /// A production listener reachable from the network without protection.
    #[error(
        "refusing to serve {addr} without {missing}: configure --tls-cert/--tls-key{and_credentials}, bind a loopback address, or pass --insecure"
    )]
    Unprotected {
        /// The listen address.
        addr: SocketAddr,
        /// What is missing.
        missing: &'static str,
        /// The credentials hint, where credentials apply.
        and_credentials: &'static str,
    },
}

impl ServerSecurity {
    /// The task that re-reads this listener's TLS files and credentials file on SIGHUP and
    /// when they change (checked every `check_interval`); empty when there is nothing to
    /// re-read.
    pub fn reloader(&self, check_interval: Duration) -> Reloader {
        let mut items: Vec<Arc<dyn reload::Reload>> = Vec::new();
        if let Some(tls) = &self.tls {
            items.push(Arc::new(tls.clone()));
        }
        if let Some(credentials) = self.credentials.as_ref().filter(|c| c.file().is_some()) {
            items.push(credentials.clone());
        }
        Reloader::new(items, check_interval)
    }
}

impl SecurityArgs {
    /// Loads the TLS material and credentials and checks that a non-loopback `listen` address
    /// is protected (or `--insecure` was given).
    pub fn load(
        &self,
        listen: SocketAddr,
        auth: CallerAuth,
    ) -> Result<ServerSecurity, SecurityError> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(ReloadableTls::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
                client_certs: self.tls_client_cert,
            })?),
            _ => None,
        };
        let credentials = match &self.credentials_file {
            Some(path) => Some(Arc::new(Credentials::load(path)?)),
            None => None,
        };
        let loopback = listen.ip().is_loopback();
        let needs_credentials = auth == CallerAuth::Required;
        let missing = match (tls.is_some(), credentials.is_some() || !needs_credentials) {
            (true, true) => None,
            (false, true) => Some("tls"),
            (true, false) => Some("credentials"),
            (false, false) => Some("tls and credentials"),
        };
        if let Some(missing) = missing
            && !loopback
        {
            if !self.insecure {
                return Err(SecurityError::Unprotected {
                    addr: listen,
                    missing,
                    and_credentials: if needs_credentials {
                        " and --credentials-file"
                    } else {
                        ""
                    },
                });
            }
            warn!(
                addr = %listen,
                missing,
                "INSECURE: serving a non-loopback address without {missing} because --insecure was given; anyone who can reach it can call it"
            );
        }
        Ok(ServerSecurity {
            tls,
            credentials,
            rate_limit: Some(RateLimit {
                per_second: self.rate_limit,
                burst: self.rate_burst,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_listeners_off_loopback_need_tls_and_credentials() {
        let public: SocketAddr = "0.0.0.0:50051".parse().expect("addr");
        let loopback: SocketAddr = "127.0.0.1:50051".parse().expect("addr");
        let args = SecurityArgs::default();
        let error = args
            .load(public, CallerAuth::Required)
            .expect_err("unprotected");
        assert!(
            error.to_string().contains("without tls and credentials"),
            "{error}"
        );
        assert!(
            args.load(public, CallerAuth::InCall).is_err(),
            "tls still needed"
        );
        assert!(args.load(loopback, CallerAuth::Required).is_ok());
        let insecure = SecurityArgs {
            insecure: true,
            ..args
        };
        assert!(insecure.load(public, CallerAuth::Required).is_ok());
    }
}
