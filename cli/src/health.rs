//! `waybill health`: the gRPC health check of one listener, for container health checks and
//! scripts (the image has no other gRPC client). Prints the status the listener answers on
//! stdout (`SERVING`, `NOT_SERVING`, …) and exits 0 only for `SERVING`; 1 when it answers
//! anything else or cannot be asked, with the reason on stderr. When the check fails because
//! the probe and the listener disagree on TLS (the listener speaks TLS and no --tls-ca was
//! given, or plaintext although one was; it wants a client certificate and none was given),
//! the reason says so and names the flag to pass.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use rustls::{
    AlertDescription, ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::{
    Code,
    transport::{Certificate, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Settings of `waybill health`.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// The listener, `host:port`.
    address: String,
    /// The service to ask about (e.g. `waybill.dispatcher.Relay`); empty asks about the server.
    #[arg(long, default_value = "")]
    service: String,
    /// Connect with TLS, trusting this CA bundle (PEM).
    #[arg(long, env = "WAYBILL_HEALTH_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate to present, for a listener that requires one (mTLS); with
    /// --tls-key and --tls-ca.
    #[arg(long, env = "WAYBILL_HEALTH_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "WAYBILL_HEALTH_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the address's host).
    #[arg(long)]
    server_name: Option<String>,
    /// How long to wait for an answer.
    #[arg(long, default_value = "3s", value_parser = waybill_service_kit::duration::parse_duration)]
    timeout: Duration,
}

/// The TLS material read from the files the flags name.
pub(crate) struct TlsFiles {
    /// The CA bundle the listener's certificate must chain to (PEM).
    pub(crate) ca: Vec<u8>,
    /// Client certificate chain and key (PEM).
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// What [`diagnose`] needs to know of the connection that failed.
pub(crate) struct Probe<'a> {
    /// The listener, `host:port`.
    pub(crate) address: &'a str,
    /// The name the server's certificate is checked against.
    pub(crate) server_name: String,
    /// How long to wait for each answer.
    pub(crate) timeout: Duration,
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

impl HealthArgs {
    fn tls_files(&self) -> anyhow::Result<Option<TlsFiles>> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => None,
        };
        Ok(Some(TlsFiles {
            ca: read(ca)?,
            identity,
        }))
    }

    fn probe(&self) -> Probe<'_> {
        Probe {
            address: &self.address,
            server_name: self
                .server_name
                .clone()
                .unwrap_or_else(|| host_of(&self.address).to_owned()),
            timeout: self.timeout,
        }
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
pub(crate) fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Asks once, prints the answer; `Ok(())` only for `SERVING`.
pub async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let tls = args.tls_files()?;
    let status = match check(&args, tls.as_ref()).await {
        Ok(status) => status,
        Err(Failure::Answered(error)) => return Err(error),
        Err(Failure::Transport(error)) => {
            return match diagnose(&args.probe(), tls.as_ref()).await {
                Some(mismatch) => Err(anyhow::anyhow!("{}: {mismatch}", args.address)),
                None => Err(error),
            };
        }
    };
    println!("{}", status.as_str_name());
    anyhow::ensure!(
        status == ServingStatus::Serving,
        "{} reports {}",
        args.address,
        status.as_str_name()
    );
    Ok(())
}

/// Why the check got no status.
enum Failure {
    /// The listener answered with an error (e.g. an unknown service).
    Answered(anyhow::Error),
    /// No answer: the connection failed or broke.
    Transport(anyhow::Error),
}

async fn check(args: &HealthArgs, tls: Option<&TlsFiles>) -> Result<ServingStatus, Failure> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", args.address))
        .with_context(|| format!("{:?} is not a host:port address", args.address))
        .map_err(Failure::Answered)?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    if let Some(files) = tls {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&files.ca));
        if let Some((cert, key)) = &files.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &args.server_name {
            config = config.domain_name(name.clone());
        }
        endpoint = endpoint
            .tls_config(config)
            .context("cannot set up TLS with that CA")
            .map_err(Failure::Answered)?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.address))
        .map_err(Failure::Transport)?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service.clone(),
        })
        .await;
    match answer {
        Ok(response) => Ok(response.into_inner().status()),
        Err(status) => {
            let transport = matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
            );
            let error = anyhow::Error::from(status)
                .context(format!("health check of {} failed", args.address));
            Err(if transport {
                Failure::Transport(error)
            } else {
                Failure::Answered(error)
            })
        }
    }
}

/// What a TLS handshake with the listener showed.
#[derive(Debug)]
enum Handshake {
    /// The listener did not answer in TLS.
    NotTls,
    /// It speaks TLS and took the connection.
    Accepted,
    /// It speaks TLS; its certificate is not trusted (or not for that name).
    Untrusted(rustls::Error),
    /// It wants a client certificate and was given none.
    ClientCertRequired,
    /// It refused the client certificate given.
    ClientCertRefused(AlertDescription),
    /// It speaks TLS and ended the handshake for another reason.
    Refused,
}

/// When a call got no answer: whether the caller and the listener disagree on TLS, and the
/// flag that fixes it (`waybill health` and `waybill admin` both ask).
pub(crate) async fn diagnose(args: &Probe<'_>, tls: Option<&TlsFiles>) -> Option<String> {
    let handshake = handshake(args, tls).await.ok()?;
    match (tls, handshake) {
        (None, Handshake::NotTls) => None,
        (None, _) => Some(
            "the listener speaks TLS: pass --tls-ca (the CA bundle that issued its certificate)"
                .to_owned(),
        ),
        (Some(_), Handshake::NotTls) => speaks_plaintext_http2(args).await.then(|| {
            "--tls-ca was given but the listener speaks plaintext: drop --tls-ca (and \
             --tls-cert/--tls-key)"
                .to_owned()
        }),
        (Some(files), Handshake::ClientCertRequired) if files.identity.is_none() => Some(
            "the listener requires a client certificate: pass --tls-cert and --tls-key".to_owned(),
        ),
        (Some(_), Handshake::ClientCertRefused(alert)) => Some(format!(
            "the listener refused the client certificate ({alert:?}): pass one its client CA \
             issued with --tls-cert and --tls-key"
        )),
        (Some(_), Handshake::Untrusted(error)) => Some(format!(
            "the listener's certificate is not trusted ({error}): check --tls-ca and \
             --server-name"
        )),
        (Some(_), Handshake::ClientCertRequired | Handshake::Accepted | Handshake::Refused) => None,
    }
}

/// The HTTP/2 client preface and an empty SETTINGS frame.
const HTTP2_PREFACE: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// A TLS handshake with the listener, as the check would make it (the given CA and client
/// certificate; none trusted without --tls-ca: then only whether it speaks TLS matters), then
/// the HTTP/2 preface, so that a refusal after the handshake (TLS 1.3 refuses a missing client
/// certificate only then) is seen too.
async fn handshake(args: &Probe<'_>, tls: Option<&TlsFiles>) -> anyhow::Result<Handshake> {
    let mut roots = RootCertStore::empty();
    if let Some(files) = tls {
        for cert in CertificateDer::pem_slice_iter(&files.ca) {
            roots.add(cert?)?;
        }
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
    let mut config = match tls.and_then(|files| files.identity.as_ref()) {
        Some((cert, key)) => builder.with_client_auth_cert(
            CertificateDer::pem_slice_iter(cert).collect::<Result<_, _>>()?,
            PrivateKeyDer::from_pem_slice(key)?,
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(args.server_name.clone())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let outcome = tokio::time::timeout(args.timeout, async {
        let tcp = TcpStream::connect(args.address).await?;
        let mut stream = connector.connect(name, tcp).await?;
        stream.write_all(HTTP2_PREFACE).await?;
        let mut frame = [0_u8; 9];
        stream.read_exact(&mut frame).await?;
        Ok::<_, std::io::Error>(())
    })
    .await
    .context("no answer")?;
    let error = match outcome {
        Ok(()) => return Ok(Handshake::Accepted),
        Err(error) => error,
    };
    let tls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    Ok(match tls_error {
        Some(error @ rustls::Error::InvalidCertificate(_)) => Handshake::Untrusted(error.clone()),
        Some(rustls::Error::AlertReceived(AlertDescription::CertificateRequired)) => {
            Handshake::ClientCertRequired
        }
        Some(rustls::Error::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::DecryptError),
        )) => Handshake::ClientCertRefused(*alert),
        Some(rustls::Error::AlertReceived(_) | rustls::Error::PeerIncompatible(_)) => {
            Handshake::Refused
        }
        // Not a TLS record, or the connection ended mid-handshake.
        _ => Handshake::NotTls,
    })
}

/// Whether the listener answers the HTTP/2 preface in plaintext (with its SETTINGS frame).
async fn speaks_plaintext_http2(args: &Probe<'_>) -> bool {
    let answer = tokio::time::timeout(args.timeout, async {
        let mut tcp = TcpStream::connect(args.address).await?;
        tcp.write_all(HTTP2_PREFACE).await?;
        let mut frame = [0_u8; 9];
        tcp.read_exact(&mut frame).await?;
        Ok::<_, std::io::Error>(frame)
    })
    .await;
    // A frame header: 24-bit length, then the type (4: SETTINGS).
    matches!(answer, Ok(Ok(frame)) if frame[3] == 4)
}
