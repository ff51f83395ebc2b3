//! Starting and stopping a service the same way everywhere: the listener is bound first (a
//! taken port fails start-up before anything else runs, and the error names the address), the
//! database is connected and migrated, the metrics endpoint runs beside the server and stops
//! after it; and [`RunError`], what any service can stop with. A service's own error wraps this
//! one and adds only what is its own (Orders' page-token key, the dispatcher's Kafka client).
//!
//! Errors here carry their cause as [`std::error::Error::source`], never also in their message:
//! print them with the chain (`anyhow`'s `{:#}`) to read the cause once.

use std::{io, net::SocketAddr};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    db::{Database, DbError, PoolSettings, SchemaPolicy},
    metrics::{Metrics, MetricsArgs},
    security::{ClientCerts, SecurityArgs, SecurityError},
};

/// Why a service could not start, or stopped with an error, for reasons every service shares.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listen address (gRPC or metrics) could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Connecting or migrating failed.
    #[error(transparent)]
    Database(#[from] DbError),
    /// TLS, credentials or the production guard refused the listener's settings.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The gRPC server failed.
    #[error("the gRPC server failed")]
    Serve(#[from] tonic::transport::Error),
}

impl RunError {
    /// Whether the service refused its settings before starting (TLS files, credentials, the
    /// production guard): a usage error, not a failure of the service.
    pub fn is_settings_error(&self) -> bool {
        matches!(self, Self::Security(_))
    }
}

/// Binds a TCP listener, naming the address if that fails.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })
}

/// Connects to the database at `url` with a pool of at most `max_connections`, and migrates it
/// or checks its schema as `schema` says.
pub async fn connect(
    url: &str,
    max_connections: u32,
    schema: SchemaPolicy,
    shutdown: CancellationToken,
) -> Result<Database, RunError> {
    let settings = PoolSettings {
        max_connections,
        schema,
        ..PoolSettings::default()
    };
    Ok(Database::connect(url, &settings, shutdown).await?)
}

/// Logs the one line every service starts with, alike everywhere: where it listens, whether
/// with TLS and which client certificates it asks for, whether callers need credentials, the
/// database (location, never a password) and its schema version. `details` are the service's
/// own fields, appended as `key=value`.
pub fn log_started(
    service: &str,
    addr: SocketAddr,
    security: &SecurityArgs,
    db: &Database,
    details: &[(&str, &str)],
) {
    let tls = if security.tls_cert.is_some() {
        "on"
    } else {
        "off"
    };
    let client_certs = match (&security.tls_client_ca, security.tls_client_cert) {
        (None, _) => "none",
        (Some(_), ClientCerts::Optional) => "optional",
        (Some(_), ClientCerts::Required) => "required",
    };
    let credentials = if security.credentials_file.is_some() {
        "on"
    } else {
        "off"
    };
    let details: Vec<String> = details.iter().map(|(k, v)| format!("{k}={v}")).collect();
    tracing::info!(
        service,
        %addr,
        tls,
        client_certs,
        credentials,
        database = db.location(),
        schema_version = db.schema_version(),
        details = %details.join(" "),
        "service started"
    );
}

/// The Prometheus endpoint of a running service (or nothing, when `--metrics-listen` is unset):
/// started before the server, [stopped](MetricsEndpoint::stop) after it, whether the server
/// ended by shutdown or by failure.
#[derive(Debug)]
pub struct MetricsEndpoint {
    stop: CancellationToken,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl MetricsEndpoint {
    /// Binds the metrics listener if one is configured (a taken port fails here, naming it)
    /// and serves `metrics` on it until [`MetricsEndpoint::stop`] or `shutdown`.
    pub async fn start(
        args: &MetricsArgs,
        metrics: &Metrics,
        shutdown: &CancellationToken,
    ) -> Result<Self, RunError> {
        let stop = shutdown.child_token();
        let task = match args.metrics_listen {
            None => None,
            Some(addr) => args
                .start(metrics, stop.clone())
                .await
                .map_err(|source| RunError::Bind { addr, source })?,
        };
        Ok(Self { stop, task })
    }

    /// Stops the endpoint and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[tokio::test]
    async fn a_taken_port_names_the_address_once() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        let error = bind(addr).await.expect_err("taken");
        assert_eq!(error.to_string(), format!("cannot listen on {addr}"));
        let cause = error
            .source()
            .expect("the OS error is the source")
            .to_string();
        assert!(!error.to_string().contains(&cause), "{error}: {cause}");
        assert!(!error.is_settings_error());
    }

    #[tokio::test]
    async fn no_metrics_listener_is_nothing_to_stop() {
        let endpoint = MetricsEndpoint::start(
            &MetricsArgs::default(),
            &Metrics::new(),
            &CancellationToken::new(),
        )
        .await
        .expect("nothing to bind");
        assert!(endpoint.task.is_none());
        endpoint.stop().await;
    }
}
