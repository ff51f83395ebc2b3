//! How `waybill admin` and `waybill catalog` reach a service: the addresses of the dispatcher
//! (DispatchAdmin), Orders (CatalogService) and StatusIngest (GetReportStats), TLS with a CA
//! bundle and optionally a client certificate (mTLS), and the operator's API key sent as
//! `authorization: Bearer` — from flags or the environment — and what a failed call means:
//! [`CallError`], whose [`CallError::exit_code`] tells a usage error (64) from a refusal (1)
//! and an unreachable service (69).
//!
//! The environment names are the client side's own: `WAYBILL_TLS_CA` and `WAYBILL_API_KEY` (as
//! `waybill catalog` and `waybill keys generate` always read them), `WAYBILL_CLIENT_CERT` and
//! `WAYBILL_CLIENT_KEY` for the client certificate (a service's `WAYBILL_TLS_CERT` /
//! `WAYBILL_TLS_KEY` are its own server certificate: a command run beside a service must not
//! present that).

use std::{future::Future, path::PathBuf, time::Duration};

use tonic::{
    Code, Request, Response, Status,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use waybill_service_kit::rpc_metrics::code_name;

use crate::health::{Probe, TlsFiles, diagnose, host_of};

/// Exit status of a usage error: a bad flag or file (sysexits.h `EX_USAGE`, as every command).
pub const EXIT_USAGE: u8 = 64;
/// Exit status when the service cannot be reached (sysexits.h `EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: u8 = 69;

/// Where the services are and how to prove who is calling (flags of `waybill admin` and
/// `waybill catalog`, given before or after the subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The dispatcher's admin listener (DispatchAdmin), `host:port`.
    #[arg(
        long,
        env = "WAYBILL_DISPATCHER",
        default_value = "127.0.0.1:50052",
        global = true
    )]
    pub dispatcher: String,
    /// The Orders listener (CatalogService), `host:port`.
    #[arg(
        long,
        env = "WAYBILL_ORDERS",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub orders: String,
    /// StatusIngest's listener (report stats), `host:port`.
    #[arg(
        long,
        env = "WAYBILL_STATUS_INGEST",
        default_value = "127.0.0.1:50053",
        global = true
    )]
    pub status_ingest: String,
    /// Connect with TLS, trusting this CA bundle (PEM); without it, plaintext.
    #[arg(long, env = "WAYBILL_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate to present to a listener that requires one (mTLS); with
    /// --tls-key and --tls-ca.
    #[arg(long, env = "WAYBILL_CLIENT_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "WAYBILL_CLIENT_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
    /// The name the services' certificates must carry (default: each address's host).
    #[arg(long, global = true)]
    pub server_name: Option<String>,
    /// The caller's API key, sent as `authorization: Bearer` (an operator's; a storefront's
    /// may only list the catalog). Prefer the environment to the flag: a flag is visible in
    /// the process list.
    #[arg(long, env = "WAYBILL_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// How long to wait for a connection and for each answer.
    #[arg(
        long,
        default_value = "10s",
        value_parser = waybill_service_kit::duration::parse_duration,
        global = true
    )]
    pub timeout: Duration,
}

/// Which service a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// DispatchAdmin.
    Dispatcher,
    /// CatalogService.
    Orders,
    /// StatusIngest.
    StatusIngest,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Dispatcher => "the dispatcher",
            Self::Orders => "Orders",
            Self::StatusIngest => "StatusIngest",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Self::Dispatcher => "--dispatcher",
            Self::Orders => "--orders",
            Self::StatusIngest => "--status-ingest",
        }
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// A bad flag, file or value: nothing was sent.
    #[error("{0}")]
    Usage(String),
    /// The service answered with an error status.
    #[error("{service} ({address}) refused {rpc}: {code}: {message}")]
    Refused {
        /// Which service.
        service: &'static str,
        /// Its address.
        address: String,
        /// The RPC.
        rpc: &'static str,
        /// The gRPC status code's name (`NOT_FOUND`, …).
        code: &'static str,
        /// The status message.
        message: String,
    },
    /// The TLS handshake failed and why is known (no or a refused client certificate, an
    /// untrusted server certificate, TLS against plaintext).
    #[error("{service} at {address} refused the connection: {hint}")]
    Tls {
        /// Which service.
        service: &'static str,
        /// Its address.
        address: String,
        /// What is wrong and the flag that fixes it.
        hint: String,
    },
    /// No answer: the service is down, unreachable or too slow.
    #[error(
        "{service} at {address} cannot be reached ({detail}): is it running? ({flag} sets the address)"
    )]
    Unavailable {
        /// Which service.
        service: &'static str,
        /// Its address.
        address: String,
        /// What failed.
        detail: String,
        /// The flag naming its address.
        flag: &'static str,
    },
}

impl CallError {
    /// The process's exit status for this failure: 64 usage, 69 unreachable, 1 refused.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => EXIT_USAGE,
            Self::Unavailable { .. } => EXIT_UNAVAILABLE,
            Self::Refused { .. } | Self::Tls { .. } => 1,
        }
    }
}

/// A usage error as an `anyhow::Error` (exit 64).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    CallError::Usage(message.into()).into()
}

fn read(path: &PathBuf, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|error| usage(format!("cannot read {what} {}: {error}", path.display())))
}

impl Connection {
    /// The address of `target`.
    pub fn address(&self, target: Target) -> &str {
        match target {
            Target::Dispatcher => &self.dispatcher,
            Target::Orders => &self.orders,
            Target::StatusIngest => &self.status_ingest,
        }
    }

    fn server_name(&self, target: Target) -> String {
        self.server_name
            .clone()
            .unwrap_or_else(|| host_of(self.address(target)).to_owned())
    }

    /// The TLS files the flags name (none without --tls-ca).
    fn tls_files(&self) -> anyhow::Result<Option<TlsFiles>> {
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((
                read(cert, "the client certificate")?,
                read(key, "the client key")?,
            )),
            (None, None) => None,
            _ => return Err(usage("--tls-cert and --tls-key go together")),
        };
        let Some(ca) = &self.tls_ca else {
            if identity.is_some() {
                return Err(usage(
                    "--tls-cert needs --tls-ca (the CA bundle that issued the service's certificate)",
                ));
            }
            return Ok(None);
        };
        Ok(Some(TlsFiles {
            ca: read(ca, "the CA bundle")?,
            identity,
        }))
    }

    /// A connection to `target`, TLS when --tls-ca is set.
    pub async fn channel(&self, target: Target) -> anyhow::Result<Channel> {
        let address = self.address(target);
        let tls = self.tls_files()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|_| {
                usage(format!(
                    "{} {address:?} is not a host:port address",
                    target.flag()
                ))
            })?
            .connect_timeout(self.timeout)
            .timeout(self.timeout);
        if let Some(files) = &tls {
            let mut config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&files.ca))
                .domain_name(self.server_name(target));
            if let Some((cert, key)) = &files.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|error| usage(format!("cannot set up TLS with those files: {error}")))?;
        }
        match endpoint.connect().await {
            Ok(channel) => Ok(channel),
            Err(error) => Err(self.unreachable(target, describe(&error)).await),
        }
    }

    /// `message` with the API key attached, when one is set.
    pub fn request<T>(&self, message: T) -> anyhow::Result<Request<T>> {
        let mut request = Request::new(message);
        if let Some(key) = &self.api_key {
            let value: MetadataValue<_> = format!("Bearer {key}").parse().map_err(|_| {
                usage("the API key (--api-key / WAYBILL_API_KEY) is not a valid header value")
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }

    /// The answer of `call` to `target`'s `rpc`, or what its failure means.
    pub async fn answer<T>(
        &self,
        target: Target,
        rpc: &'static str,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> anyhow::Result<T> {
        match call.await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.failure(target, rpc, status).await),
        }
    }

    async fn failure(&self, target: Target, rpc: &'static str, status: Status) -> anyhow::Error {
        // A TLS 1.3 listener refuses a missing client certificate after the handshake: the
        // call then fails on the transport, not with an answer.
        let transport = matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
        );
        if transport && let Some(error) = self.tls_mismatch(target).await {
            return error;
        }
        if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) {
            let detail = format!("{}: {}", code_name(status.code()), status.message());
            return CallError::Unavailable {
                service: target.name(),
                address: self.address(target).to_owned(),
                detail,
                flag: target.flag(),
            }
            .into();
        }
        CallError::Refused {
            service: target.name(),
            address: self.address(target).to_owned(),
            rpc,
            code: code_name(status.code()),
            message: status.message().to_owned(),
        }
        .into()
    }

    /// A failed connection: a TLS mismatch if the handshake shows one, else unreachable.
    async fn unreachable(&self, target: Target, detail: String) -> anyhow::Error {
        if let Some(error) = self.tls_mismatch(target).await {
            return error;
        }
        CallError::Unavailable {
            service: target.name(),
            address: self.address(target).to_owned(),
            detail,
            flag: target.flag(),
        }
        .into()
    }

    /// Whether this command and `target`'s listener disagree on TLS (as `waybill health`
    /// finds out), with the flag that fixes it.
    async fn tls_mismatch(&self, target: Target) -> Option<anyhow::Error> {
        let files = self.tls_files().ok()?;
        let probe = Probe {
            address: self.address(target),
            server_name: self.server_name(target),
            timeout: self.timeout,
        };
        let hint = diagnose(&probe, files.as_ref()).await?;
        Some(
            CallError::Tls {
                service: target.name(),
                address: self.address(target).to_owned(),
                hint,
            }
            .into(),
        )
    }
}

/// A transport error with its causes, on one line.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let more = inner.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_tell_usage_refusal_and_unreachable_apart() {
        assert_eq!(CallError::Usage("x".into()).exit_code(), 64);
        let refused = CallError::Refused {
            service: "the dispatcher",
            address: "a:1".into(),
            rpc: "GetDispatch",
            code: code_name(Code::NotFound),
            message: "no dispatch".into(),
        };
        assert_eq!(refused.exit_code(), 1);
        assert_eq!(
            refused.to_string(),
            "the dispatcher (a:1) refused GetDispatch: NOT_FOUND: no dispatch"
        );
        let down = CallError::Unavailable {
            service: "Orders",
            address: "a:1".into(),
            detail: "connection refused".into(),
            flag: "--orders",
        };
        assert_eq!(down.exit_code(), 69);
    }
}
