#!/bin/sh
# Enrols partners with a dispatcher as an operator does: the partner, its public signing key
# and its routes, through DispatchAdmin over TLS (grpcurl), as the operator role. Idempotent:
# enrolling again updates the partner and its routes; a key id enrolled before is reported
# and left as it is.
#
# Usage: deploy/enroll.sh [--help] [--OPTION VALUE]... [PARTNER=COUNTRY,COUNTRY...]...
# Each PARTNER=COUNTRIES enrols partner PARTNER with a route per country (ISO 3166-1 alpha-2);
# without any, the two example partners: local-express=US and
# distance-freight=CA,MX,GB,DE,FR,NL,JP,AU.
# Every option can be given as the environment variable beside it instead (a flag wins).
#
#   --dispatcher HOST:PORT  WAYBILL_DISPATCHER_ADDR         default 127.0.0.1:50052
#   --server-name NAME      WAYBILL_DISPATCHER_SERVER_NAME  default the address's host
#       the name the dispatcher's certificate must carry
#   --ca FILE               WAYBILL_CA_FILE                 default ./pki/operator/ca.pem
#       the CA that issued the dispatcher's certificate
#   --keys-dir DIR          WAYBILL_PARTNER_KEYS_DIR        default ./pki/operator
#       where each partner's raw Ed25519 public key is, base64, as <partner>.pub.b64
#       (deploy/pki.sh writes them; `waybill keys generate` prints a partner's)
#   --key-id-suffix SUFFIX  WAYBILL_KEY_ID_SUFFIX           default -1
#       the key is enrolled under the key id <partner><suffix>; the partner signs with that
#       key id (its connector's --key-id)
#   --cert FILE, --key FILE WAYBILL_OPERATOR_CERT, WAYBILL_OPERATOR_KEY   default unset
#       an operator client certificate (mTLS; the dispatcher needs --tls-client-ca) instead of
#       the API key
#   --handover-deadline D   WAYBILL_HANDOVER_DEADLINE       default 120s
#   --resend-budget N       WAYBILL_RESEND_BUDGET           default 3
#
# The operator API key comes from the environment only (never the command line):
#   WAYBILL_OPERATOR_API_KEY    sent as "authorization: Bearer …" unless --cert is given
#
# Needs grpcurl (the compose file runs this in the fullstorydev/grpcurl image).
#
# Example, on a host:
#   WAYBILL_OPERATOR_API_KEY=… deploy/enroll.sh --dispatcher admin.example.com:50052 \
#     --ca /etc/waybill/ca.pem --keys-dir ./partner-keys --key-id-suffix -2026 acme=DE,AT,CH
set -eu

usage() { awk 'NR > 1 && /^set -eu$/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

addr=${WAYBILL_DISPATCHER_ADDR-127.0.0.1:50052}
server_name=${WAYBILL_DISPATCHER_SERVER_NAME-}
ca=${WAYBILL_CA_FILE-./pki/operator/ca.pem}
keys_dir=${WAYBILL_PARTNER_KEYS_DIR-./pki/operator}
suffix=${WAYBILL_KEY_ID_SUFFIX--1}
cert=${WAYBILL_OPERATOR_CERT-}
key=${WAYBILL_OPERATOR_KEY-}
deadline=${WAYBILL_HANDOVER_DEADLINE-120s}
budget=${WAYBILL_RESEND_BUDGET-3}

partners=""
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --*)
      [ $# -ge 2 ] || { echo "enroll: $1 needs a value (--help lists the options)" >&2; exit 64; }
      case $1 in
        --dispatcher) addr=$2 ;;
        --server-name) server_name=$2 ;;
        --ca) ca=$2 ;;
        --keys-dir) keys_dir=$2 ;;
        --key-id-suffix) suffix=$2 ;;
        --cert) cert=$2 ;;
        --key) key=$2 ;;
        --handover-deadline) deadline=$2 ;;
        --resend-budget) budget=$2 ;;
        *) echo "enroll: unknown option $1 (--help lists the options)" >&2; exit 64 ;;
      esac
      shift 2 ;;
    *=*) partners="${partners} $1"; shift ;;
    *) echo "enroll: $1 is not PARTNER=COUNTRY,… (--help)" >&2; exit 64 ;;
  esac
done
[ -n "${partners}" ] || partners="local-express=US distance-freight=CA,MX,GB,DE,FR,NL,JP,AU"
[ -n "${server_name}" ] || server_name=${addr%:*}
[ -r "${ca}" ] || { echo "enroll: cannot read the CA file ${ca} (--ca)" >&2; exit 66; }
if [ -n "${cert}" ]; then
  [ -n "${key}" ] || { echo "enroll: --cert needs --key" >&2; exit 64; }
  set -- -cert "${cert}" -key "${key}"
else
  : "${WAYBILL_OPERATOR_API_KEY:?is needed (or an operator client certificate: --cert, --key)}"
  set -- -H "authorization: Bearer ${WAYBILL_OPERATOR_API_KEY}"
fi

call() {
  grpcurl -cacert "${ca}" -servername "${server_name}" "$@" -d "${body}" "${addr}" \
    "waybill.v1.DispatchAdmin/${method}" >/dev/null
}

# "local-express" -> "Local Express"
display_name() {
  echo "$1" | tr '-' ' ' | awk '{ for (i = 1; i <= NF; i++) $i = toupper(substr($i, 1, 1)) substr($i, 2); print }'
}

for spec in ${partners}; do
  partner=${spec%%=*}
  countries=$(echo "${spec#*=}" | tr ',' ' ')
  key_id="${partner}${suffix}"
  pub="${keys_dir}/${partner}.pub.b64"
  [ -r "${pub}" ] || { echo "enroll: cannot read ${pub} (the partner's public key)" >&2; exit 66; }

  method=EnrollPartner
  body="{\"partner\":{\"id\":\"${partner}\",\"display_name\":\"$(display_name "${partner}")\",\"enabled\":true,\"handover_deadline\":\"${deadline}\",\"resend_budget\":${budget}}}"
  call "$@"

  method=AddPartnerKey
  body="{\"partner_id\":\"${partner}\",\"key_id\":\"${key_id}\",\"public_key\":\"$(tr -d '\n' < "${pub}")\"}"
  if ! out=$(call "$@" 2>&1); then
    case ${out} in
      *AlreadyExists*) echo "enroll: key ${key_id} was enrolled before" ;;
      *) echo "${out}" >&2; exit 1 ;;
    esac
  fi

  for country in ${countries}; do
    lower=$(echo "${country}" | tr 'A-Z' 'a-z')
    method=SetRoute
    body="{\"route\":{\"id\":\"${partner}-${lower}\",\"partner_id\":\"${partner}\",\"country_code\":\"${country}\",\"priority\":100,\"enabled\":true}}"
    call "$@"
  done
  echo "enroll: ${partner} with key ${key_id}, routes ${countries}"
done
