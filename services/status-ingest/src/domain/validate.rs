//! The request's fields, checked before the token is looked at: each refusal names the field and
//! the rule (`INVALID_ARGUMENT`), quoting caller input only bounded and escaped.

use chrono::{DateTime, Utc};
use uuid::Uuid;
use waybill_proto::v1::{OrderStatus, ReportStatusRequest};
use waybill_service_kit::text::{
    InvalidField, TextKind, check_required_text, check_text, is_partner_id, quote,
};

/// Longest report id and tracking id.
pub const MAX_ID_CHARS: usize = 128;
/// Longest detail text.
pub const MAX_DETAIL_CHARS: usize = 1024;
/// Longest detail code.
pub const MAX_DETAIL_CODE_CHARS: usize = 64;

/// The statuses a partner may report. `PLACED` and `SENT_TO_PARTNER` are Waybill's own.
pub const PARTNER_STATUSES: [OrderStatus; 5] = [
    OrderStatus::ReceivedByPartner,
    OrderStatus::Shipped,
    OrderStatus::Delivered,
    OrderStatus::Exception,
    OrderStatus::RejectedByPartner,
];

/// A request whose fields are well-formed (the token not yet checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFields {
    /// The order (correlation id).
    pub order_id: Uuid,
    /// The reporting partner.
    pub partner_id: String,
    /// The partner's report id.
    pub report_id: String,
    /// What happened.
    pub status: OrderStatus,
    /// Tracking id; may be empty.
    pub tracking_id: String,
    /// Text for people; may be empty.
    pub detail: String,
    /// Machine-readable reason; may be empty.
    pub detail_code: String,
    /// Someone must act.
    pub action_required: bool,
    /// When it happened, the partner's clock.
    pub occurred_at: DateTime<Utc>,
}

impl ReportFields {
    /// The report the request's token must be bound to: every field the partner says, as the
    /// request carries it (the status by its short name). StatusIngest and `waybill
    /// partner-check`'s fake StatusIngest check tokens against it.
    pub fn bound_report(&self, request: &ReportStatusRequest) -> waybill_token::Report {
        waybill_token::Report {
            partner_id: request.partner_id.clone(),
            order_id: request.correlation_id.clone(),
            report_id: request.report_id.clone(),
            status: self.status.short_name().to_owned(),
            tracking_id: request.tracking_id.clone(),
            detail: request.detail.clone(),
            detail_code: request.detail_code.clone(),
            action_required: request.action_required,
            occurred_at: self.occurred_at,
        }
    }
}

/// Checks every field of `request` except the token.
pub fn report_fields(request: &ReportStatusRequest) -> Result<ReportFields, InvalidField> {
    let order_id = Uuid::parse_str(request.correlation_id.trim()).map_err(|_| {
        InvalidField::new(
            "correlation_id",
            format!(
                "must be the order id (a UUID) the order's Kafka message carried, got {}",
                quote(&request.correlation_id)
            ),
        )
    })?;
    check_partner_id(&request.partner_id)?;
    check_required_text(
        "report_id",
        &request.report_id,
        MAX_ID_CHARS,
        TextKind::Line,
    )?;
    let status = OrderStatus::try_from(request.status)
        .ok()
        .filter(|status| PARTNER_STATUSES.contains(status))
        .ok_or_else(|| {
            InvalidField::new(
                "status",
                format!(
                    "must be one of {} (got {})",
                    PARTNER_STATUSES
                        .iter()
                        .map(|s| s.as_str_name())
                        .collect::<Vec<_>>()
                        .join(", "),
                    OrderStatus::try_from(request.status).map_or_else(
                        |_| request.status.to_string(),
                        |s| s.as_str_name().to_owned()
                    )
                ),
            )
        })?;
    check_text(
        "tracking_id",
        &request.tracking_id,
        MAX_ID_CHARS,
        TextKind::Line,
    )?;
    check_text(
        "detail",
        &request.detail,
        MAX_DETAIL_CHARS,
        TextKind::Multiline,
    )?;
    let code_ok = request.detail_code.len() <= MAX_DETAIL_CODE_CHARS
        && request
            .detail_code
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !code_ok {
        return Err(InvalidField::new(
            "detail_code",
            format!(
                "must be at most {MAX_DETAIL_CODE_CHARS} upper-case letters, digits or '_' (ADDRESS_NOT_FOUND), got {}",
                quote(&request.detail_code)
            ),
        ));
    }
    let occurred_at = request
        .occurred_at
        .as_ref()
        .ok_or_else(|| InvalidField::new("occurred_at", "is required"))?;
    let occurred_at = waybill_proto::time::from_timestamp(occurred_at)
        .ok_or_else(|| InvalidField::new("occurred_at", "is not a valid time"))?;
    Ok(ReportFields {
        order_id,
        partner_id: request.partner_id.clone(),
        report_id: request.report_id.clone(),
        status,
        tracking_id: request.tracking_id.clone(),
        detail: request.detail.clone(),
        detail_code: request.detail_code.clone(),
        action_required: request.action_required,
        occurred_at,
    })
}

/// Partner ids are lower-case letters, digits and '-' (they name Kafka topics).
fn check_partner_id(partner_id: &str) -> Result<(), InvalidField> {
    if is_partner_id(partner_id) {
        Ok(())
    } else {
        Err(InvalidField::new(
            "partner_id",
            format!(
                "must be 1-63 lower-case letters, digits or '-', got {}",
                quote(partner_id)
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ReportStatusRequest {
        ReportStatusRequest {
            correlation_id: "0193a3f0-0000-7000-8000-000000000001".to_owned(),
            partner_id: "acme".to_owned(),
            report_id: "r-1".to_owned(),
            status: OrderStatus::Shipped.into(),
            tracking_id: "1Z999".to_owned(),
            detail: "left the depot\nbay 4".to_owned(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_795_342_500,
                nanos: 250_000_000,
            }),
            token: "t".to_owned(),
            detail_code: "IN_TRANSIT".to_owned(),
            action_required: false,
        }
    }

    fn field_of(request: ReportStatusRequest) -> String {
        report_fields(&request).expect_err("refused").field
    }

    #[test]
    fn a_good_request_passes_with_its_time_exact() {
        let fields = report_fields(&request()).expect("valid");
        assert_eq!(fields.status, OrderStatus::Shipped);
        assert_eq!(fields.occurred_at.timestamp_subsec_millis(), 250);
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(
            field_of(ReportStatusRequest {
                correlation_id: "x".into(),
                ..request()
            }),
            "correlation_id"
        );
        assert_eq!(
            field_of(ReportStatusRequest {
                partner_id: "Acme".into(),
                ..request()
            }),
            "partner_id"
        );
        assert_eq!(
            field_of(ReportStatusRequest {
                report_id: " ".into(),
                ..request()
            }),
            "report_id"
        );
        assert_eq!(
            field_of(ReportStatusRequest {
                report_id: "r".repeat(129),
                ..request()
            }),
            "report_id"
        );
        assert_eq!(
            field_of(ReportStatusRequest {
                tracking_id: "a\0b".into(),
                ..request()
            }),
            "tracking_id"
        );
        assert_eq!(
            field_of(ReportStatusRequest {
                detail: "x".repeat(1025),
                ..request()
            }),
            "detail"
        );
        assert_eq!(
            field_of(ReportStatusRequest {
                detail_code: "lower".into(),
                ..request()
            }),
            "detail_code"
        );
        assert_eq!(
            field_of(ReportStatusRequest {
                occurred_at: None,
                ..request()
            }),
            "occurred_at"
        );
    }

    #[test]
    fn only_partner_statuses_may_be_reported() {
        for status in [
            OrderStatus::Unspecified,
            OrderStatus::Placed,
            OrderStatus::SentToPartner,
        ] {
            let error = report_fields(&ReportStatusRequest {
                status: status.into(),
                ..request()
            })
            .expect_err("refused");
            assert_eq!(error.field, "status");
        }
        let error = report_fields(&ReportStatusRequest {
            status: 99,
            ..request()
        })
        .expect_err("refused");
        assert!(error.rule.contains("got 99"), "{error}");
        for status in PARTNER_STATUSES {
            assert!(
                report_fields(&ReportStatusRequest {
                    status: status.into(),
                    ..request()
                })
                .is_ok()
            );
        }
    }

    #[test]
    fn caller_input_is_quoted_bounded() {
        let error = report_fields(&ReportStatusRequest {
            partner_id: "X".repeat(10_000),
            ..request()
        })
        .expect_err("refused");
        assert!(error.to_string().len() < 200, "{error}");
    }
}
