#!/bin/sh
# One-shot: enrols the example partners with the dispatcher as an operator would — the partner,
# its public signing key (made by pki.sh) and its routes — through DispatchAdmin over TLS with
# the operator API key. Runs in the grpcurl image after the dispatcher is healthy; idempotent
# (enrolling again updates; adding the same key again is refused as a duplicate, which is fine).
set -eu
ADMIN="${WAYBILL_DISPATCHER_ADDR:-dispatcher:50052}"
call() {
  grpcurl -cacert /pki/ca.pem -servername dispatcher \
    -H "authorization: Bearer ${WAYBILL_OPERATOR_API_KEY:?}" \
    -d "$2" "${ADMIN}" "waybill.v1.DispatchAdmin/$1" >/dev/null
}

enroll() { # partner display-name countries...
  partner=$1; name=$2; shift 2
  call EnrollPartner "{\"partner\":{\"id\":\"${partner}\",\"display_name\":\"${name}\",\"enabled\":true,\"handover_deadline\":\"120s\",\"resend_budget\":3}}"
  key=$(cat "/pki/${partner}.pub.b64")
  if ! out=$(call AddPartnerKey "{\"partner_id\":\"${partner}\",\"key_id\":\"${partner}-compose\",\"public_key\":\"${key}\"}" 2>&1); then
    case "${out}" in
      *AlreadyExists*) echo "enroll: key ${partner}-compose was enrolled before" ;;
      *) echo "${out}" >&2; exit 1 ;;
    esac
  fi
  for country in "$@"; do
    lower=$(echo "${country}" | tr 'A-Z' 'a-z')
    call SetRoute "{\"route\":{\"id\":\"${partner}-${lower}\",\"partner_id\":\"${partner}\",\"country_code\":\"${country}\",\"priority\":100,\"enabled\":true}}"
  done
  echo "enroll: ${partner} with key ${partner}-compose, routes $*"
}

enroll local-express "Local Express" US
enroll distance-freight "Distance Freight" CA MX GB DE FR NL JP AU
