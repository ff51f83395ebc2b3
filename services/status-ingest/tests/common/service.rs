//! A StatusIngest served over loopback gRPC, and the reports and requests the `ReportStatus`
//! tests send it.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use ed25519_dalek::Signer as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use uuid::Uuid;
use waybill_proto::{
    time::to_timestamp,
    v1::{
        self as pb, GetReportStatsRequest, OrderStatus, ReportStatusRequest,
        status_ingest_client::StatusIngestClient,
    },
};
use waybill_service_kit::grpc::ServerLimits;
use waybill_status_ingest::IngestDeps;
use waybill_test_kit::TestBackend;
use waybill_token::{Report, ReportClaims, SigningKey, TokenSigner};

use super::{World, signer};

/// A running StatusIngest over `deps`.
pub struct Service {
    /// A client of it.
    pub client: StatusIngestClient<Channel>,
    /// Where it listens.
    pub address: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    /// Serves `deps` on a loopback port.
    pub async fn start(deps: IngestDeps) -> Self {
        Self::start_with(deps, ServerLimits::default()).await
    }

    /// Serves `deps` on a loopback port within `limits`.
    pub async fn start_with(deps: IngestDeps, limits: ServerLimits) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                waybill_status_ingest::serve(listener, deps, limits, shutdown)
                    .await
                    .unwrap();
            }
        });
        let client = StatusIngestClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Self {
            client,
            address: addr,
            shutdown,
            task,
        }
    }

    /// Stops the service and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }

    /// `GetReportStats`.
    pub async fn stats(&self) -> pb::ReportStats {
        self.client
            .clone()
            .get_report_stats(GetReportStatsRequest {})
            .await
            .unwrap()
            .into_inner()
    }
}

/// A report of `partner` on `order`, with the detail "scanned at the depot".
pub fn report(
    order: Uuid,
    partner: &str,
    report_id: &str,
    status: OrderStatus,
    tracking: &str,
    at: DateTime<Utc>,
) -> Report {
    Report {
        partner_id: partner.to_owned(),
        order_id: order.to_string(),
        report_id: report_id.to_owned(),
        status: status.short_name().to_owned(),
        tracking_id: tracking.to_owned(),
        detail: "scanned at the depot".to_owned(),
        detail_code: String::new(),
        action_required: false,
        occurred_at: at,
    }
}

/// The request carrying `report` with `token`.
pub fn request(report: &Report, token: String) -> ReportStatusRequest {
    ReportStatusRequest {
        correlation_id: report.order_id.clone(),
        partner_id: report.partner_id.clone(),
        report_id: report.report_id.clone(),
        status: OrderStatus::from_short_name(&report.status).unwrap().into(),
        tracking_id: report.tracking_id.clone(),
        detail: report.detail.clone(),
        occurred_at: Some(to_timestamp(report.occurred_at)),
        token,
        detail_code: report.detail_code.clone(),
        action_required: report.action_required,
    }
}

/// A token with any header and claims, signed with `key`.
pub fn hand_made(key: &SigningKey, header: serde_json::Value, claims: &ReportClaims) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
    );
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// acme (key k1, seed 1) and globex (key g1, seed 2), one order routed to acme.
pub async fn world(backend: TestBackend) -> (World, Uuid, TokenSigner) {
    let world = World::new(backend).await;
    world.partner("acme").await;
    world.partner("globex").await;
    let acme = signer(1, "k1");
    world.key("acme", &acme).await;
    world.key("globex", &signer(2, "g1")).await;
    let order = world.order().await;
    world.route(order, "acme").await;
    (world, order, acme)
}
