#!/bin/sh
# Makes a Waybill deployment's private PKI: a CA, the certificates of the gRPC services, of
# Postgres and of Kafka, an operator client certificate, the credentials file, the page-token
# key and the example partners' signing keys. Each kind goes to a directory of its own, so each
# process is given only what it needs and the CA's private key never leaves the CA directory.
# Idempotent: what exists is kept, what is missing is made (delete a file to make it again;
# a certificate is reissued by the CA that is there).
#
# Usage: deploy/pki.sh [--help] [--OPTION VALUE]...
# Every option can be given as the environment variable beside it instead (a flag wins).
# Lists are comma-separated. A directory set to "" is skipped (e.g. no Kafka certificate for a
# managed Kafka).
#
#   --ca-dir DIR          WAYBILL_PKI_CA_DIR          default ./pki/ca
#       ca.key, ca.pem. Only this script reads ca.key: keep this directory with the PKI job.
#   --services-dir DIR    WAYBILL_PKI_SERVICES_DIR    default ./pki/services
#       for orders, dispatcher and status-ingest: ca.pem, server.pem, server.key,
#       credentials.json, page-token.key
#   --operator-dir DIR    WAYBILL_PKI_OPERATOR_DIR    default ./pki/operator
#       for operators: ca.pem, operator.pem and operator.key (a client certificate, the caller
#       "ops-console" with the operator role), <partner>.pub.b64 (the partners' public keys,
#       for deploy/enroll.sh)
#   --postgres-dir DIR    WAYBILL_PKI_POSTGRES_DIR    default ./pki/postgres
#       for the Postgres server: ca.pem, server.pem, server.key
#   --kafka-dir DIR       WAYBILL_PKI_KAFKA_DIR       default ./pki/kafka
#       for the Kafka broker: ca.pem, server.pem, server.key and server.p12 (PKCS#12 keystore
#       of both, password WAYBILL_KAFKA_KEYSTORE_PASSWORD)
#   --partners-dir DIR    WAYBILL_PKI_PARTNERS_DIR    default ./pki/partners
#       one directory per partner: key.pem (its Ed25519 signing key, PKCS#8 PEM) and ca.pem
#       (to verify StatusIngest's and Kafka's certificates)
#   --partners LIST       WAYBILL_PKI_PARTNERS        default local-express,distance-freight
#   --clients-dir DIR     WAYBILL_PKI_CLIENTS_DIR     default ./pki/clients
#   --clients LIST        WAYBILL_PKI_CLIENTS         default none
#       a client certificate per name: <name>.pem and <name>.key, CN=<name>, e.g. for Postgres
#       (`cert` authentication: the CN is the database user) or Kafka over mTLS (the CN is the
#       principal)
#   --service-names LIST  WAYBILL_PKI_SERVICE_NAMES   default orders,dispatcher,status-ingest,localhost,127.0.0.1
#   --postgres-names LIST WAYBILL_PKI_POSTGRES_NAMES  default postgres,localhost,127.0.0.1
#   --kafka-names LIST    WAYBILL_PKI_KAFKA_NAMES     default kafka,localhost,127.0.0.1
#       the DNS names and IP addresses each server certificate carries: every name clients use
#       to reach it (clients verify the name: sslmode=verify-full, Kafka, gRPC)
#   --days N              WAYBILL_PKI_DAYS            default 825
#   --owner UID:GID       WAYBILL_PKI_OWNER           default unset (the caller)
#       owner of the services' and partners' files: the user the waybill processes run as
#       (the image's is 10001:10001)
#   --postgres-owner U:G  WAYBILL_PKI_POSTGRES_OWNER  default unset (postgres image: 999:999)
#   --kafka-owner U:G     WAYBILL_PKI_KAFKA_OWNER     default unset (apache/kafka: 1000:1000)
#
# Secrets come from the environment only, never from the command line:
#   WAYBILL_STOREFRONT_API_KEY, WAYBILL_OPERATOR_API_KEY
#       the API keys credentials.json admits (only their SHA-256 is written). When both are set,
#       credentials.json is written again; when unset, an existing one is kept.
#   WAYBILL_KAFKA_KEYSTORE_PASSWORD
#       the Kafka keystore's password (needed to make server.p12)
#
# Private keys are mode 600 and owned by the process that reads them: the services and
# Postgres refuse key files that group or others can read. Needs openssl (installed with apk
# when missing, as in the compose file's alpine container).
#
# Example, on a host:
#   WAYBILL_STOREFRONT_API_KEY=$(openssl rand -hex 32) WAYBILL_OPERATOR_API_KEY=$(openssl rand -hex 32) \
#   WAYBILL_KAFKA_KEYSTORE_PASSWORD=$(openssl rand -hex 16) \
#     deploy/pki.sh --ca-dir /srv/waybill-ca --services-dir /etc/waybill/pki \
#       --service-names orders.example.com,admin.example.com,status.example.com \
#       --postgres-names db.internal --kafka-names kafka-1.internal,kafka-2.internal
set -eu

usage() { awk 'NR > 1 && /^set -eu$/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

ca_dir=${WAYBILL_PKI_CA_DIR-./pki/ca}
services_dir=${WAYBILL_PKI_SERVICES_DIR-./pki/services}
operator_dir=${WAYBILL_PKI_OPERATOR_DIR-./pki/operator}
postgres_dir=${WAYBILL_PKI_POSTGRES_DIR-./pki/postgres}
kafka_dir=${WAYBILL_PKI_KAFKA_DIR-./pki/kafka}
partners_dir=${WAYBILL_PKI_PARTNERS_DIR-./pki/partners}
partners=${WAYBILL_PKI_PARTNERS-local-express,distance-freight}
clients_dir=${WAYBILL_PKI_CLIENTS_DIR-./pki/clients}
clients=${WAYBILL_PKI_CLIENTS-}
service_names=${WAYBILL_PKI_SERVICE_NAMES-orders,dispatcher,status-ingest,localhost,127.0.0.1}
postgres_names=${WAYBILL_PKI_POSTGRES_NAMES-postgres,localhost,127.0.0.1}
kafka_names=${WAYBILL_PKI_KAFKA_NAMES-kafka,localhost,127.0.0.1}
days=${WAYBILL_PKI_DAYS-825}
owner=${WAYBILL_PKI_OWNER-}
postgres_owner=${WAYBILL_PKI_POSTGRES_OWNER-}
kafka_owner=${WAYBILL_PKI_KAFKA_OWNER-}

while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
  esac
  [ $# -ge 2 ] || { echo "pki: $1 needs a value (--help lists the options)" >&2; exit 64; }
  case $1 in
    --ca-dir) ca_dir=$2 ;;
    --services-dir) services_dir=$2 ;;
    --operator-dir) operator_dir=$2 ;;
    --postgres-dir) postgres_dir=$2 ;;
    --kafka-dir) kafka_dir=$2 ;;
    --partners-dir) partners_dir=$2 ;;
    --partners) partners=$2 ;;
    --clients-dir) clients_dir=$2 ;;
    --clients) clients=$2 ;;
    --service-names) service_names=$2 ;;
    --postgres-names) postgres_names=$2 ;;
    --kafka-names) kafka_names=$2 ;;
    --days) days=$2 ;;
    --owner) owner=$2 ;;
    --postgres-owner) postgres_owner=$2 ;;
    --kafka-owner) kafka_owner=$2 ;;
    *) echo "pki: unknown option $1 (--help lists the options)" >&2; exit 64 ;;
  esac
  shift 2
done
[ -n "${ca_dir}" ] || { echo "pki: --ca-dir must not be empty" >&2; exit 64; }
[ -n "${services_dir}" ] || { echo "pki: --services-dir must not be empty" >&2; exit 64; }
[ -n "${operator_dir}" ] || { echo "pki: --operator-dir must not be empty" >&2; exit 64; }

command -v openssl >/dev/null || apk add --no-cache openssl >/dev/null
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "${tmp}"' EXIT

# chown_to OWNER FILE...: nothing when OWNER is empty.
chown_to() {
  who=$1; shift
  if [ -n "${who}" ]; then chown "${who}" "$@"; fi
}

# san LIST: "a,b,10.0.0.1" -> "DNS:a,DNS:b,IP:10.0.0.1".
san() {
  out=""
  for name in $(echo "$1" | tr ',' ' '); do
    case ${name} in
      *:*) entry="IP:${name}" ;;
      *[!0-9.]*) entry="DNS:${name}" ;;
      *) entry="IP:${name}" ;;
    esac
    out="${out:+${out},}${entry}"
  done
  echo "${out}"
}

# issue DIR FILE CN NAMES USAGE: DIR/FILE.pem, signed by the CA, and its key DIR/FILE.key.
issue() {
  dir=$1; file=$2; cn=$3; names=$4; usage=$5
  [ -s "${dir}/${file}.pem" ] && [ -s "${dir}/${file}.key" ] && return 0
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=${cn}" \
    -keyout "${dir}/${file}.key" -out "${tmp}/${file}.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "extendedKeyUsage=${usage}"
    if [ -n "${names}" ]; then echo "subjectAltName=$(san "${names}")"; fi
  } > "${tmp}/${file}.ext"
  openssl x509 -req -in "${tmp}/${file}.csr" -CA "${ca_dir}/ca.pem" -CAkey "${ca_dir}/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days "${days}" -extfile "${tmp}/${file}.ext" \
    -out "${dir}/${file}.pem" 2>/dev/null
  echo "pki: issued ${dir}/${file}.pem (CN=${cn}${names:+, ${names}})"
}

mkdir -p "${ca_dir}" "${services_dir}" "${operator_dir}"
chmod 700 "${ca_dir}"
chmod 755 "${services_dir}" "${operator_dir}"

# Before the directories were split, the CA key, the operator's key and the partners' public
# keys lived with the services' files: move them where they belong now.
if [ -s "${services_dir}/ca.key" ]; then
  if [ ! -s "${ca_dir}/ca.key" ]; then
    mv "${services_dir}/ca.key" "${ca_dir}/ca.key"
    cp "${services_dir}/ca.pem" "${ca_dir}/ca.pem"
  else
    rm -f "${services_dir}/ca.key"
  fi
  echo "pki: moved the CA key out of ${services_dir}"
fi
for f in operator.pem operator.key; do
  if [ -s "${services_dir}/${f}" ]; then
    [ -s "${operator_dir}/${f}" ] || cp "${services_dir}/${f}" "${operator_dir}/${f}"
    rm -f "${services_dir}/${f}"
  fi
done
for f in "${services_dir}"/*.pub.b64; do
  [ -e "${f}" ] || continue
  if [ ! -s "${operator_dir}/${f##*/}" ]; then
    cp "${f}" "${operator_dir}/"
    chmod 644 "${operator_dir}/${f##*/}"
  fi
  rm -f "${f}"
done

# The CA.
if [ ! -s "${ca_dir}/ca.key" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "${days}" \
    -subj "/CN=waybill private ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "${ca_dir}/ca.key" -out "${ca_dir}/ca.pem" 2>/dev/null
  echo "pki: made the CA in ${ca_dir}"
fi
chmod 600 "${ca_dir}/ca.key"
chmod 644 "${ca_dir}/ca.pem"

# The gRPC services: one certificate for every listener (orders, dispatcher, status-ingest).
cp "${ca_dir}/ca.pem" "${services_dir}/ca.pem"
issue "${services_dir}" server waybill "${service_names}" serverAuth
[ -s "${services_dir}/page-token.key" ] || openssl rand -hex 32 > "${services_dir}/page-token.key"

# The operator: a client certificate (mTLS) and the CA to check the services with.
cp "${ca_dir}/ca.pem" "${operator_dir}/ca.pem"
issue "${operator_dir}" operator ops-console "" clientAuth

# The callers: API key hashes and the operator certificate's fingerprint.
sha256() { openssl dgst -sha256 -r | cut -d' ' -f1; }
if [ -n "${WAYBILL_STOREFRONT_API_KEY:-}" ] && [ -n "${WAYBILL_OPERATOR_API_KEY:-}" ]; then
  storefront=$(printf %s "${WAYBILL_STOREFRONT_API_KEY}" | sha256)
  operator=$(printf %s "${WAYBILL_OPERATOR_API_KEY}" | sha256)
  cert=$(openssl x509 -in "${operator_dir}/operator.pem" -outform der | sha256)
  cat > "${tmp}/credentials.json" <<EOF
{"callers": [
  {"name": "storefront", "role": "storefront", "api_key_sha256": "${storefront}"},
  {"name": "operator", "role": "operator", "api_key_sha256": "${operator}"},
  {"name": "ops-console", "role": "operator", "client_cert_sha256": "${cert}"}
]}
EOF
  mv "${tmp}/credentials.json" "${services_dir}/credentials.json"
elif [ ! -s "${services_dir}/credentials.json" ]; then
  echo "pki: set WAYBILL_STOREFRONT_API_KEY and WAYBILL_OPERATOR_API_KEY to make credentials.json" >&2
  exit 64
fi
chmod 600 "${services_dir}/server.key" "${services_dir}/page-token.key"
chmod 644 "${services_dir}/ca.pem" "${services_dir}/server.pem" "${services_dir}/credentials.json"
chown_to "${owner}" "${services_dir}" "${services_dir}"/*
chmod 600 "${operator_dir}/operator.key"
chmod 644 "${operator_dir}/ca.pem" "${operator_dir}/operator.pem"

# Postgres: its server certificate (ssl_cert_file, ssl_key_file). Postgres refuses a key file
# that group or others can read unless root owns it.
if [ -n "${postgres_dir}" ]; then
  mkdir -p "${postgres_dir}"
  chmod 755 "${postgres_dir}"
  cp "${ca_dir}/ca.pem" "${postgres_dir}/ca.pem"
  issue "${postgres_dir}" server postgres "${postgres_names}" serverAuth
  chmod 600 "${postgres_dir}/server.key"
  chmod 644 "${postgres_dir}/ca.pem" "${postgres_dir}/server.pem"
  chown_to "${postgres_owner}" "${postgres_dir}" "${postgres_dir}"/*
fi

# Kafka: its server certificate, also as a PKCS#12 keystore (ssl.keystore.type=PKCS12).
if [ -n "${kafka_dir}" ]; then
  mkdir -p "${kafka_dir}"
  chmod 755 "${kafka_dir}"
  cp "${ca_dir}/ca.pem" "${kafka_dir}/ca.pem"
  issue "${kafka_dir}" server kafka "${kafka_names}" serverAuth
  if [ ! -s "${kafka_dir}/server.p12" ]; then
    : "${WAYBILL_KAFKA_KEYSTORE_PASSWORD:?is needed to make the Kafka keystore}"
    openssl pkcs12 -export -name kafka -in "${kafka_dir}/server.pem" -inkey "${kafka_dir}/server.key" \
      -certfile "${ca_dir}/ca.pem" -passout env:WAYBILL_KAFKA_KEYSTORE_PASSWORD \
      -out "${kafka_dir}/server.p12"
    echo "pki: made the Kafka keystore ${kafka_dir}/server.p12"
  fi
  chmod 600 "${kafka_dir}/server.key" "${kafka_dir}/server.p12"
  chmod 644 "${kafka_dir}/ca.pem" "${kafka_dir}/server.pem"
  chown_to "${kafka_owner}" "${kafka_dir}" "${kafka_dir}"/*
fi

# Client certificates (mTLS to Postgres or Kafka), owned like the services' files.
if [ -n "${clients}" ]; then
  [ -n "${clients_dir}" ] || { echo "pki: --clients needs --clients-dir" >&2; exit 64; }
  mkdir -p "${clients_dir}"
  chmod 755 "${clients_dir}"
  cp "${ca_dir}/ca.pem" "${clients_dir}/ca.pem"
  for client in $(echo "${clients}" | tr ',' ' '); do
    issue "${clients_dir}" "${client}" "${client}" "" clientAuth
    chmod 600 "${clients_dir}/${client}.key"
    chmod 644 "${clients_dir}/${client}.pem"
    chown_to "${owner}" "${clients_dir}/${client}.pem" "${clients_dir}/${client}.key"
  done
  chmod 644 "${clients_dir}/ca.pem"
fi

# The example partners: each one's Ed25519 signing key (kept by the partner) and its public
# key (given to the operator, who enrols it).
if [ -n "${partners_dir}" ]; then
  for partner in $(echo "${partners}" | tr ',' ' '); do
    dir="${partners_dir}/${partner}"
    mkdir -p "${dir}"
    chmod 755 "${dir}"
    [ -s "${dir}/key.pem" ] || openssl genpkey -algorithm ed25519 -out "${dir}/key.pem"
    # The SPKI DER of an Ed25519 key ends with the 32 raw public-key bytes.
    openssl pkey -in "${dir}/key.pem" -pubout -outform DER | tail -c 32 | base64 \
      > "${operator_dir}/${partner}.pub.b64"
    cp "${ca_dir}/ca.pem" "${dir}/ca.pem"
    chmod 600 "${dir}/key.pem"
    chmod 644 "${dir}/ca.pem" "${operator_dir}/${partner}.pub.b64"
    chown_to "${owner}" "${dir}" "${dir}"/*
  done
fi
echo "pki: ready (CA ${ca_dir}; services ${services_dir}; operator ${operator_dir}${postgres_dir:+; postgres ${postgres_dir}}${kafka_dir:+; kafka ${kafka_dir}}${clients:+; clients ${clients_dir}}${partners_dir:+; partners ${partners_dir}})"
