//! `waybill health`: the gRPC health check of one listener, for container health checks and
//! scripts (the image has no other gRPC client). Exits 0 when the service is `SERVING`, 1 when
//! it answers anything else or cannot be reached, with the reason on stderr.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
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
    /// The name the server's certificate must carry (default: the address's host).
    #[arg(long)]
    server_name: Option<String>,
    /// How long to wait for an answer.
    #[arg(long, default_value = "3s", value_parser = waybill_service_kit::duration::parse_duration)]
    timeout: Duration,
}

/// Asks once; `Ok(())` only for `SERVING`.
pub async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let scheme = if args.tls_ca.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", args.address))
        .with_context(|| format!("{:?} is not a host:port address", args.address))?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    if let Some(ca) = &args.tls_ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        if let Some(name) = &args.server_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint = endpoint
            .tls_config(tls)
            .context("cannot set up TLS with that CA")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.address))?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service.clone(),
        })
        .await
        .with_context(|| format!("health check of {} failed", args.address))?
        .into_inner()
        .status();
    anyhow::ensure!(
        status == ServingStatus::Serving,
        "{} reports {}",
        args.address,
        status.as_str_name()
    );
    Ok(())
}
