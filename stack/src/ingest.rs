//! StatusIngest as a stack runs it: started with the stack, and stopped and started again on
//! the same address for the tests of a StatusIngest that goes away.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use waybill_service_kit::{
    db::Database, grpc::ServerLimits, metrics::Metrics, security::ServerSecurity,
};
use waybill_status_ingest::{IngestDeps, metrics::IngestMetrics};

use crate::{error::StackError, services::Services};

/// The name StatusIngest's task goes by.
pub(crate) const SERVICE: &str = "status ingest";

/// What a restart needs: the address, the listener's security, the audience and the counters,
/// which live across restarts (registered once, with the first start).
pub(crate) struct Ingest {
    pub(crate) addr: SocketAddr,
    security: ServerSecurity,
    audience: String,
    counters: Arc<IngestMetrics>,
}

impl Ingest {
    /// Starts StatusIngest on `listener`, its series in `registry`.
    pub(crate) fn start(
        services: &Services,
        (listener, addr): (TcpListener, SocketAddr),
        db: &Database,
        (audience, security): (String, ServerSecurity),
        registry: &Metrics,
    ) -> Self {
        let ingest = Self {
            addr,
            security,
            audience,
            counters: Arc::new(IngestMetrics::default()),
        };
        ingest.spawn(services, listener, db, registry.clone());
        ingest
    }

    /// The reply-to the relay stamps on every order: this StatusIngest's URL.
    pub(crate) fn reply_to(&self) -> String {
        let scheme = if self.security.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Starts it again on the same address, with the same counters. The port may still be
    /// held for a moment by the connections of the instance that stopped: binding is retried
    /// for up to 5 s.
    pub(crate) async fn restart(
        &self,
        services: &Services,
        db: &Database,
    ) -> Result<(), StackError> {
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) if attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(source) => {
                    return Err(StackError::Bind {
                        addr: self.addr,
                        source,
                    });
                }
            }
        };
        // The counters are registered already; this start's own registry is not served.
        self.spawn(services, listener, db, Metrics::new());
        Ok(())
    }

    fn spawn(&self, services: &Services, listener: TcpListener, db: &Database, registry: Metrics) {
        let deps = IngestDeps {
            metrics: Arc::clone(&self.counters),
            registry,
            ..IngestDeps::new(db, self.audience.clone())
        };
        let limits = ServerLimits {
            security: self.security.clone(),
            ..ServerLimits::default()
        };
        services.spawn(SERVICE, |stop| {
            waybill_status_ingest::serve(listener, deps, limits, stop)
        });
    }
}
