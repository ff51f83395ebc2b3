#!/bin/sh
# Makes the compose deployment's TLS material, credentials and partner keys, once:
# into /pki (a named volume the Waybill services mount read-only):
#   ca.pem, ca.key            a private CA (keep ca.key off the services in a real deployment)
#   server.pem, server.key    one certificate for orders, dispatcher, status-ingest, localhost
#   operator.pem, operator.key a client certificate for mTLS, mapped to the operator role
#   credentials.json          the callers: API key hashes (SHA-256) and the client certificate's
#   page-token.key            the shared key authenticating ListOrders page tokens
#   <partner>.pub.b64         each example partner's raw Ed25519 public key (base64), which the
#                             one-shot `enroll` service registers with the dispatcher
# and into /partners/<partner> (one volume per partner, mounted only by that partner's
# container): key.pem, its Ed25519 signing key (PKCS#8 PEM, as `openssl genpkey` makes it), and
# ca.pem, to verify StatusIngest's certificate.
# API keys come from WAYBILL_STOREFRONT_API_KEY / WAYBILL_OPERATOR_API_KEY; only their hashes
# are written. Private keys are owned by the services' user (uid 10001) and mode 600: the
# services refuse key files that group or others can read.
set -eu
cd /pki
command -v openssl >/dev/null || apk add --no-cache openssl >/dev/null

make_partner_keys() {
  for partner in local-express distance-freight; do
    dir="/partners/${partner}"
    mkdir -p "${dir}"
    [ -s "${dir}/key.pem" ] || openssl genpkey -algorithm ed25519 -out "${dir}/key.pem"
    # The SPKI DER of an Ed25519 key ends with the 32 raw public-key bytes.
    openssl pkey -in "${dir}/key.pem" -pubout -outform DER | tail -c 32 | base64 > "${partner}.pub.b64"
    cp ca.pem "${dir}/ca.pem"
    chown -R 10001:10001 "${dir}" "${partner}.pub.b64"
    chmod 600 "${dir}/key.pem"
    chmod 644 "${dir}/ca.pem" "${partner}.pub.b64"
  done
}

if [ -s credentials.json ]; then
  make_partner_keys
  echo "pki: already made; delete the volume to make it again"
  exit 0
fi

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
  -subj "/CN=waybill compose ca" -keyout ca.key -out ca.pem 2>/dev/null

openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=waybill" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:orders,DNS:dispatcher,DNS:status-ingest,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
  -extfile server.ext -out server.pem 2>/dev/null

openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=ops-console" -keyout operator.key -out operator.csr 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' > operator.ext
openssl x509 -req -in operator.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
  -extfile operator.ext -out operator.pem 2>/dev/null

hash() { printf %s "$1" | openssl dgst -sha256 -r | cut -d' ' -f1; }
cert_hash=$(openssl x509 -in operator.pem -outform der | openssl dgst -sha256 -r | cut -d' ' -f1)
cat > credentials.json <<EOF
{"callers": [
  {"name": "storefront", "role": "storefront", "api_key_sha256": "$(hash "${WAYBILL_STOREFRONT_API_KEY:?}")"},
  {"name": "operator", "role": "operator", "api_key_sha256": "$(hash "${WAYBILL_OPERATOR_API_KEY:?}")"},
  {"name": "ops-console", "role": "operator", "client_cert_sha256": "${cert_hash}"}
]}
EOF
openssl rand -hex 32 > page-token.key

rm -f ./*.csr ./*.ext ./*.srl
chown 10001:10001 ./*
chmod 600 ./*.key page-token.key
chmod 644 ./*.pem credentials.json
make_partner_keys
echo "pki: made CA, server and operator certificates, credentials.json, page-token.key, partner keys"
