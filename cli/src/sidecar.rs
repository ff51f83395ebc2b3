//! `waybill sidecar`: the connector for partners who want the SDK's guarantees without writing
//! Kafka code. It consumes the partner's topic, keeps the durable inbox, signs and sends every
//! report, and hands each order to the partner's own service through one RPC,
//! `waybill.v1.PartnerAdapter/RequestShipment` (`proto/waybill/v1/partner_adapter.proto`);
//! the partner's service reports later statuses (SHIPPED, DELIVERED, EXCEPTION) to the
//! sidecar's `waybill.v1.PartnerReports/Report`, which stores them in the inbox before it
//! answers. The adapter is called exactly as an SDK adapter is: once per order in effect, again
//! with the same idempotency key only when its answer could not be stored.

use std::net::SocketAddr;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    Code, Request, Response, Status,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};
use waybill_connector_sdk::{
    Acceptance, PartnerError, ReportError, ShipmentContext, StatusReporter, StatusUpdate,
    TransportPartner,
};
use waybill_proto::v1::{
    DispatchedOrder, LaterStatus, LaterStatusStored, OrderStatus, ShipmentAnswer, ShipmentRequest,
    partner_adapter_client::PartnerAdapterClient,
    partner_reports_server::{PartnerReports, PartnerReportsServer},
    shipment_answer::Answer,
};
use waybill_service_kit::grpc::{self, ServerLimits};

use crate::partner::ConnectorArgs;

/// Settings of `waybill sidecar`. The partner must be enrolled with Waybill (topic, routes,
/// public key), as for any connector.
#[derive(Debug, clap::Args)]
pub struct SidecarArgs {
    /// The partner's own service implementing `waybill.v1.PartnerAdapter`, `http://host:port`
    /// (a plaintext call: run the sidecar beside it, on loopback or in the same pod).
    #[arg(long, env = "WAYBILL_ADAPTER")]
    adapter: String,
    /// Where the sidecar serves `waybill.v1.PartnerReports` (later statuses from the partner's
    /// service), with gRPC health and reflection. Plaintext: bind it to loopback or the pod.
    #[arg(
        long,
        env = "WAYBILL_SIDECAR_LISTEN",
        default_value = "127.0.0.1:50070"
    )]
    listen: SocketAddr,
    #[command(flatten)]
    connector: ConnectorArgs,
}

/// The service the sidecar serves, as health reports it.
const REPORTS_SERVICE: &str = "waybill.v1.PartnerReports";

/// A setting the sidecar refuses before starting (exit 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(String);

/// Runs the sidecar until `shutdown`: the connector, calling the adapter, and the reports
/// service. The partner id is required (`--partner-id`): a sidecar has no default partner.
pub async fn run(args: SidecarArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let partner_id = args
        .connector
        .partner_id()
        .ok_or_else(|| {
            SettingsError("--partner-id (WAYBILL_PARTNER_ID) is required: the partner id the sidecar's partner is enrolled under".to_owned())
        })?
        .to_owned();
    let adapter = Endpoint::from_shared(args.adapter.clone())
        .ok()
        .filter(|_| args.adapter.starts_with("http://"))
        .ok_or_else(|| {
            SettingsError(format!(
                "--adapter {:?} is not an http://host:port address",
                args.adapter
            ))
        })?;
    // Lazily: the partner's service may start after the sidecar; a call that cannot connect
    // is a retryable failure like any other.
    let adapter = GrpcAdapter {
        client: PartnerAdapterClient::new(adapter.connect_lazy()),
    };
    // Bound before the connector joins its group: a taken port stops start-up here.
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;

    let (connector, metrics_server) = args.connector.start(&partner_id, &shutdown).await?;
    let reports = PartnerReportsServer::new(Reports {
        reporter: connector.reporter(),
    });
    let stop_serving = shutdown.child_token();
    let server = tokio::spawn({
        let stop = stop_serving.clone();
        async move {
            let routes = tonic::service::Routes::new(reports);
            let limits = ServerLimits::default();
            grpc::serve(listener, routes, &[REPORTS_SERVICE], &limits, stop).await
        }
    });
    tracing::info!(partner = %partner_id, adapter = %args.adapter, listen = %args.listen, "sidecar running");
    let ran = connector.run(adapter, shutdown).await;
    stop_serving.cancel();
    let served = server.await.context("the reports service stopped")?;
    if let Some(metrics) = metrics_server {
        let _ = metrics.await;
    }
    ran?;
    served.context("the reports service failed")?;
    Ok(())
}

/// The partner's service behind `PartnerAdapter`, as the connector's adapter.
struct GrpcAdapter {
    client: PartnerAdapterClient<Channel>,
}

impl TransportPartner for GrpcAdapter {
    async fn request_shipment(
        &self,
        order: &DispatchedOrder,
        ctx: &ShipmentContext,
    ) -> Result<Acceptance, PartnerError> {
        let traceparent = ctx.traceparent().unwrap_or_default().to_owned();
        let mut request = Request::new(ShipmentRequest {
            order: Some(order.clone()),
            idempotency_key: ctx.idempotency_key().to_owned(),
            attempt: ctx.attempt(),
            traceparent: traceparent.clone(),
        });
        // The SDK's own timeout still applies; this one tells the partner's service.
        request.set_timeout(ctx.deadline());
        // The order's trace continues in the partner's service (W3C trace context metadata).
        if let Ok(value) = MetadataValue::try_from(traceparent.as_str())
            && !traceparent.is_empty()
        {
            request.metadata_mut().insert("traceparent", value);
        }
        match self.client.clone().request_shipment(request).await {
            Ok(answer) => acceptance(answer.into_inner()),
            Err(status) => Err(call_failure(&status)),
        }
    }
}

/// The adapter's answer as the connector's.
fn acceptance(answer: ShipmentAnswer) -> Result<Acceptance, PartnerError> {
    match answer.answer {
        Some(Answer::Accepted(accepted)) if accepted.tracking_id.trim().is_empty() => Err(
            PartnerError::permanent("the adapter accepted the order without a tracking id"),
        ),
        Some(Answer::Accepted(accepted)) => {
            let mut acceptance = Acceptance::accepted(accepted.tracking_id);
            for scheduled in accepted.later {
                let status = scheduled.status.unwrap_or_default();
                let update = later_update(&status).map_err(|refused| {
                    PartnerError::permanent(format!(
                        "the adapter scheduled a later status that breaks a rule: {}",
                        refused.message()
                    ))
                })?;
                let after = scheduled
                    .after
                    .and_then(|after| std::time::Duration::try_from(after).ok())
                    .ok_or_else(|| {
                        PartnerError::permanent(
                            "the adapter scheduled a later status without a valid `after`",
                        )
                    })?;
                acceptance = acceptance.then_report(update, after);
            }
            Ok(acceptance)
        }
        Some(Answer::Rejected(rejected)) => {
            Ok(Acceptance::rejected(rejected.reason, rejected.detail_code))
        }
        Some(Answer::Failed(failed)) if failed.retryable => Err(PartnerError::retryable(format!(
            "the adapter failed: {}",
            failed.reason
        ))),
        Some(Answer::Failed(failed)) => Err(PartnerError::permanent(format!(
            "the adapter failed for good: {}",
            failed.reason
        ))),
        None => Err(PartnerError::permanent(
            "the adapter's answer is empty: set accepted, rejected or failed",
        )),
    }
}

/// A failed call: retryable (the service is down, slow, overloaded, or answered with an
/// error it may not give next time) unless it said the order itself is invalid.
fn call_failure(status: &Status) -> PartnerError {
    let what = format!(
        "the adapter call failed: {:?}: {}",
        status.code(),
        status.message()
    );
    if status.code() == Code::InvalidArgument {
        PartnerError::permanent(what)
    } else {
        PartnerError::retryable(what)
    }
}

/// `PartnerReports`: later statuses into the connector's inbox.
struct Reports {
    reporter: StatusReporter,
}

#[tonic::async_trait]
impl PartnerReports for Reports {
    async fn report(
        &self,
        request: Request<LaterStatus>,
    ) -> Result<Response<LaterStatusStored>, Status> {
        let later = request.into_inner();
        if later.order_id.is_empty() {
            return Err(Status::invalid_argument(
                "order_id is required: the idempotency key of the order's ShipmentRequest",
            ));
        }
        let update = later_update(&later)?;
        match self.reporter.report(&later.order_id, update).await {
            Ok(report_id) => Ok(Response::new(LaterStatusStored { report_id })),
            Err(error) => Err(report_refusal(&error)),
        }
    }
}

/// The request as the SDK's status update, or the field it breaks.
fn later_update(later: &LaterStatus) -> Result<StatusUpdate, Status> {
    let mut update = match OrderStatus::try_from(later.status) {
        Ok(OrderStatus::Shipped) => StatusUpdate::shipped(),
        Ok(OrderStatus::Delivered) => StatusUpdate::delivered(),
        Ok(OrderStatus::Exception) => StatusUpdate::exception(later.detail_code.clone()),
        _ => {
            return Err(Status::invalid_argument(format!(
                "status {} is not a later status: SHIPPED, DELIVERED or EXCEPTION (RECEIVED_BY_PARTNER and REJECTED_BY_PARTNER are RequestShipment's answers)",
                later.status
            )));
        }
    };
    if !later.detail_code.is_empty() {
        update = update.with_detail_code(later.detail_code.clone());
    }
    if !later.detail.is_empty() {
        update = update.with_detail(later.detail.clone());
    }
    if !later.tracking_id.is_empty() {
        update = update.with_tracking_id(later.tracking_id.clone());
    }
    if !later.report_id.is_empty() {
        update = update.with_report_id(later.report_id.clone());
    }
    if later.action_required {
        update = update.action_required();
    }
    if let Some(at) = later.occurred_at {
        let at = u32::try_from(at.nanos)
            .ok()
            .and_then(|nanos| DateTime::<Utc>::from_timestamp(at.seconds, nanos))
            .ok_or_else(|| Status::invalid_argument("occurred_at is not a valid time"))?;
        update = update.occurred_at(at);
    }
    Ok(update)
}

/// A refused report as the status the partner's service acts on.
fn report_refusal(error: &ReportError) -> Status {
    let message = error.to_string();
    match error {
        ReportError::UnknownOrder(_) => Status::not_found(message),
        ReportError::NotAccepted { .. } => Status::failed_precondition(message),
        ReportError::Inbox(_) => {
            Status::unavailable(format!("{message}; nothing was stored: try again"))
        }
        _ => Status::invalid_argument(message),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use waybill_proto::v1::{Accepted, Failed, Rejected};

    use super::*;

    fn answer(answer: Answer) -> Result<Acceptance, PartnerError> {
        acceptance(ShipmentAnswer {
            answer: Some(answer),
        })
    }

    #[test]
    fn answers_become_the_connectors() {
        let accepted = answer(Answer::Accepted(Accepted {
            tracking_id: "PY-1".into(),
            later: Vec::new(),
        }));
        assert_eq!(accepted, Ok(Acceptance::accepted("PY-1")));
        let rejected = answer(Answer::Rejected(Rejected {
            reason: "no lane".into(),
            detail_code: "NO_CAPACITY".into(),
        }));
        assert_eq!(rejected, Ok(Acceptance::rejected("no lane", "NO_CAPACITY")));
        let down = answer(Answer::Failed(Failed {
            reason: "down".into(),
            retryable: true,
        }));
        assert!(down.unwrap_err().is_retryable());
        let never = answer(Answer::Failed(Failed {
            reason: "cannot express".into(),
            retryable: false,
        }));
        assert!(!never.unwrap_err().is_retryable());
    }

    #[test]
    fn an_acceptance_may_schedule_later_statuses() {
        let scheduled = |status: OrderStatus, after: Option<prost_types::Duration>| {
            waybill_proto::v1::ScheduledStatus {
                status: Some(LaterStatus {
                    status: status as i32,
                    ..LaterStatus::default()
                }),
                after,
            }
        };
        let two_hours = Some(prost_types::Duration {
            seconds: 7_200,
            nanos: 0,
        });
        let accepted = answer(Answer::Accepted(Accepted {
            tracking_id: "PY-1".into(),
            later: vec![scheduled(OrderStatus::Shipped, two_hours)],
        }))
        .unwrap();
        assert_eq!(accepted.later().len(), 1);
        assert_eq!(
            accepted.later()[0].after,
            std::time::Duration::from_secs(7_200)
        );
        for broken in [
            scheduled(OrderStatus::ReceivedByPartner, two_hours),
            scheduled(OrderStatus::Shipped, None),
        ] {
            let refused = answer(Answer::Accepted(Accepted {
                tracking_id: "PY-1".into(),
                later: vec![broken],
            }));
            assert!(!refused.unwrap_err().is_retryable());
        }
    }

    #[test]
    fn an_empty_answer_or_tracking_id_is_an_adapter_defect_not_retried() {
        assert!(
            !acceptance(ShipmentAnswer::default())
                .unwrap_err()
                .is_retryable()
        );
        let blank = answer(Answer::Accepted(Accepted {
            tracking_id: " ".into(),
            later: Vec::new(),
        }));
        assert!(!blank.unwrap_err().is_retryable());
    }

    #[test]
    fn call_failures_are_retried_unless_the_order_is_invalid() {
        assert!(call_failure(&Status::unavailable("down")).is_retryable());
        assert!(call_failure(&Status::deadline_exceeded("slow")).is_retryable());
        assert!(call_failure(&Status::unimplemented("no such method")).is_retryable());
        assert!(!call_failure(&Status::invalid_argument("bad order")).is_retryable());
    }

    #[test]
    fn later_statuses_only_and_valid_times() {
        let shipped = LaterStatus {
            order_id: "o-1".into(),
            status: OrderStatus::Shipped as i32,
            ..Default::default()
        };
        assert!(later_update(&shipped).is_ok());
        for status in [OrderStatus::ReceivedByPartner, OrderStatus::Placed] {
            let wrong = LaterStatus {
                status: status as i32,
                ..shipped.clone()
            };
            assert_eq!(
                later_update(&wrong).unwrap_err().code(),
                Code::InvalidArgument
            );
        }
        let bad_time = LaterStatus {
            occurred_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            }),
            ..shipped
        };
        assert_eq!(
            later_update(&bad_time).unwrap_err().code(),
            Code::InvalidArgument
        );
    }
}
