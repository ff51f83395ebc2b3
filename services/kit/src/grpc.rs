//! Serving a service's tonic routes the same way everywhere: with the standard health service,
//! server reflection (v1 and v1alpha, so both current tools and grpcurl 1.8 work without proto
//! files), a trace span per request continuing the caller's W3C trace, server limits, and a
//! graceful drain bounded by a grace period.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{codegen::http, service::Routes, transport::Server};
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{info, warn};

use crate::{
    in_flight::{DEFAULT_MAX_CALLS_IN_FLIGHT, InFlightLimitLayer},
    rpc_metrics::{RpcMetrics, RpcMetricsLayer},
    security::{
        SecurityArgs, ServerSecurity, auth::AuthLayer, incoming, rate_limit::RateLimitLayer,
        reload::FILE_CHECK_INTERVAL,
    },
    telemetry,
};

/// Server-side limits; each protects the service from a different kind of overload.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Upper bound on one unary request; a stuck database call fails instead of piling up.
    pub request_timeout: Duration,
    /// In-flight requests per connection: one client cannot take every worker.
    pub concurrency_per_connection: usize,
    /// In-flight requests over all connections (health checks exempt): many connections
    /// cannot take more memory than this many calls need.
    pub concurrency_total: usize,
    /// After shutdown starts, how long in-flight requests and streams get to finish.
    pub drain_grace: Duration,
    /// TLS, who may call what, and per-caller rate limits (default: plaintext and open, for
    /// loopback development and tests; production commands load it from their flags).
    pub security: ServerSecurity,
    /// How often the TLS files and the credentials file are checked for changes (they are
    /// also re-read on SIGHUP).
    pub file_check_interval: Duration,
    /// Per-RPC series (calls by method and code, latency, refusals): off when `None`.
    pub rpc_metrics: Option<RpcMetrics>,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            concurrency_per_connection: 256,
            concurrency_total: DEFAULT_MAX_CALLS_IN_FLIGHT,
            drain_grace: Duration::from_secs(10),
            security: ServerSecurity::default(),
            file_check_interval: FILE_CHECK_INTERVAL,
            rpc_metrics: None,
        }
    }
}

impl ServerLimits {
    /// A production server's limits: the defaults, with `security` (loaded from `args`) and
    /// the bound on calls in flight `args` sets.
    pub fn from_args(args: &SecurityArgs, security: ServerSecurity) -> Self {
        Self {
            security,
            concurrency_total: args.max_calls_in_flight.get(),
            ..Self::default()
        }
    }
}

/// The health reporter of one server, with the names of the services it serves.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    services: Vec<&'static str>,
}

impl Health {
    /// Sets every served service (and the server as a whole, `""`) to `status`.
    pub async fn set_all(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for service in &self.services {
            self.reporter.set_service_status(*service, status).await;
        }
    }
}

/// Serves `routes` on `listener` with health and reflection until `shutdown` is cancelled, then
/// reports NOT_SERVING, stops accepting, and lets in-flight calls finish within the grace period.
///
/// `services` are the fully qualified names of the services in `routes`
/// (e.g. `waybill.v1.OrderService`); they are reported SERVING while the server runs.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    services: &[&'static str],
    limits: &ServerLimits,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    serve_with_health(
        listener,
        routes,
        services,
        limits,
        HealthParts::new(),
        shutdown,
    )
    .await
}

/// A health reporter and the health service it feeds, made before serving so that a service
/// can report components of its own (`HealthParts::reporter`) besides the served services.
pub struct HealthParts {
    reporter: HealthReporter,
    service: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
}

impl HealthParts {
    /// A fresh reporter (every name unknown until set) and its service.
    pub fn new() -> Self {
        let reporter = HealthReporter::new();
        let service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(reporter.clone()),
        );
        Self { reporter, service }
    }

    /// The reporter: set the status of a component name (e.g. `waybill.dispatcher.Relay`).
    pub fn reporter(&self) -> HealthReporter {
        self.reporter.clone()
    }
}

impl Default for HealthParts {
    fn default() -> Self {
        Self::new()
    }
}

/// [`serve`] with a health reporter made by the caller (see [`HealthParts`]).
pub async fn serve_with_health(
    listener: TcpListener,
    routes: Routes,
    services: &[&'static str],
    limits: &ServerLimits,
    health_parts: HealthParts,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let HealthParts {
        reporter,
        service: health_service,
    } = health_parts;
    let health = Health {
        reporter,
        services: services.to_vec(),
    };
    health.set_all(ServingStatus::Serving).await;

    let reflection_v1 = reflection_builder(services)
        .build_v1()
        .map_err(|error| warn!(%error, "reflection v1 unavailable"))
        .ok();
    let reflection_v1alpha = reflection_builder(services)
        .build_v1alpha()
        .map_err(|error| warn!(%error, "reflection v1alpha unavailable"))
        .ok();

    let local = listener.local_addr().ok();
    let security = &limits.security;
    let reloader = security.reloader(limits.file_check_interval);
    if !reloader.is_empty() {
        reloader.spawn(shutdown.clone());
    }
    if let Some(addr) = local.filter(|addr| !addr.ip().is_loopback()) {
        // Production commands refuse this unless --insecure; `waybill dev` and embedders do
        // not, so the log says it loudly wherever it happens.
        if security.tls.is_none() {
            warn!(%addr, "PLAINTEXT gRPC on a non-loopback address: traffic, credentials included, can be read and altered on the network");
        }
        if security.credentials.is_none() {
            warn!(%addr, "NO CREDENTIALS on a non-loopback address: anyone who can reach it may call every RPC");
        }
    }
    let incoming = incoming::accept(listener, security.tls.clone(), shutdown.clone());

    let mut router = Server::builder()
        // Each request's span continues the caller's trace (traceparent in the metadata).
        .trace_fn(request_span)
        .timeout(limits.request_timeout)
        .concurrency_limit_per_connection(limits.concurrency_per_connection)
        // Past the concurrency limit, refuse at once (tonic answers RESOURCE_EXHAUSTED, "Too
        // many active requests for the connection") instead of queueing without bound:
        // callers retry with backoff, memory stays flat.
        .load_shed(true)
        // Metrics outermost: every call is counted, refused ones included.
        .layer(RpcMetricsLayer::new(limits.rpc_metrics.clone()))
        // The bound over all connections, refused at once like the per-connection one.
        .layer(InFlightLimitLayer::new(limits.concurrency_total))
        // Caller identity first: nothing below it (rate limits, handlers) sees a call that is
        // not allowed; the rate limit then keys on the identified caller.
        .layer(AuthLayer::new(security.credentials.clone()))
        .layer(tower::util::option_layer(
            security.rate_limit.map(RateLimitLayer::new),
        ))
        .add_routes(routes)
        .add_service(health_service);
    if let Some(reflection) = reflection_v1 {
        router = router.add_service(reflection);
    }
    if let Some(reflection) = reflection_v1alpha {
        router = router.add_service(reflection);
    }

    // Health turns NOT_SERVING the moment shutdown starts, in a task of its own: the server's
    // shutdown signal is not polled once the incoming stream (which also stops on shutdown)
    // has ended first, and open Watch calls must still be told.
    tokio::spawn({
        let shutdown = shutdown.clone();
        let health = health.clone();
        async move {
            shutdown.cancelled().await;
            health.set_all(ServingStatus::NotServing).await;
        }
    });
    let draining = {
        let shutdown = shutdown.clone();
        async move { shutdown.cancelled().await }
    };
    let server = router.serve_with_incoming_shutdown(incoming, draining);
    tokio::pin!(server);
    let grace = limits.drain_grace;
    tokio::select! {
        result = &mut server => {
            info!(addr = ?local, "grpc server stopped");
            result
        }
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            warn!(addr = ?local, grace_ms = grace.as_millis() as u64, "drain grace period over, closing remaining calls");
            Ok(())
        }
    }
}

/// Reflection over every contract, advertising only what this server actually serves (the
/// descriptor set holds every Waybill service; listing one served elsewhere would mislead).
fn reflection_builder(services: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(waybill_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection");
    for service in services {
        builder = builder.with_service_name(*service);
    }
    builder
}

fn request_span(request: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc",
        otel.kind = "server",
        rpc.method = %request.uri().path(),
    );
    telemetry::set_parent_from_headers(&span, request.headers());
    span
}
