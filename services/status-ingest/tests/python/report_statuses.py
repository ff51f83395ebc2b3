"""A ReportStatuses call from Python: grpcio and PyJWT, independent of Waybill's Rust code.

Usage: report_statuses.py PROTO_DIR PARTNER_PY ADDRESS KEY_PEM KEY_ID AUDIENCE NOW REPORTS_JSON

NOW is the tokens' issue time (Unix seconds: the service's clock). REPORTS_JSON is a list of reports (partner_id, order_id, report_id, status, tracking_id,
detail, occurred_at RFC 3339, traceparent, and optionally "claims": fields that differ in the
token). Each is signed with KEY_PEM as docs/partners.md says and all go in one call; prints one
JSON object per result: code (the name), message, duplicate, retry_after_ms.
"""

import importlib.util
import json
import sys
import uuid
from datetime import datetime

import grpc
import jwt
from cryptography.hazmat.primitives import serialization


def main():
    proto_dir, partner_py, address, key_pem, key_id, audience, now, reports = sys.argv[1:9]
    now = int(now)
    spec = importlib.util.spec_from_file_location("partner", partner_py)
    partner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(partner)
    common_pb2, _kafka_pb2, ingest_pb2, ingest_grpc = partner.generate_stubs(proto_dir)
    with open(key_pem, "rb") as key_file:
        key = serialization.load_pem_private_key(key_file.read(), password=None)

    batch = ingest_pb2.ReportStatusesRequest()
    for report in json.loads(reports):
        claims = {
            "iss": report["partner_id"],
            "sub": report["order_id"],
            "aud": audience,
            "iat": now,
            "exp": now + 120,
            "jti": str(uuid.uuid4()),
            "report_id": report["report_id"],
            "status": report["status"],
            "tracking_id": report["tracking_id"],
            "detail": report["detail"],
            "detail_code": "",
            "action_required": False,
            "occurred_at": report["occurred_at"],
        }
        claims.update(report.get("claims", {}))
        token = jwt.encode(
            claims, key, algorithm="EdDSA", headers={"kid": key_id, "typ": "wb-report+jwt"}
        )
        item = batch.reports.add()
        item.traceparent = report["traceparent"]
        request = item.report
        request.correlation_id = report["order_id"]
        request.partner_id = report["partner_id"]
        request.report_id = report["report_id"]
        request.status = common_pb2.OrderStatus.Value("ORDER_STATUS_" + report["status"])
        request.tracking_id = report["tracking_id"]
        request.detail = report["detail"]
        request.token = token
        request.occurred_at.FromDatetime(datetime.fromisoformat(report["occurred_at"]))

    stub = ingest_grpc.StatusIngestStub(grpc.insecure_channel(address))
    response = stub.ReportStatuses(batch, timeout=10)
    for result in response.results:
        print(
            json.dumps(
                {
                    "code": next(c.name for c in grpc.StatusCode if c.value[0] == result.code),
                    "message": result.message,
                    "duplicate": result.duplicate,
                    "retry_after_ms": result.retry_after_ms,
                }
            )
        )


if __name__ == "__main__":
    main()
