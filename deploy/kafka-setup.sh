#!/bin/sh
# Makes the Kafka users and ACLs that keep each partner to its own orders, as the broker's
# `admin` super user over SASL_SSL (SASL/PLAIN inside TLS). Runs in the Kafka image (it needs
# Kafka's command-line tools) after the broker is healthy; idempotent (setting a user's
# password again replaces it, adding an ACL that exists changes nothing).
#
# Users (SCRAM-SHA-512 credentials, stored salted and hashed by the broker):
#   waybill           the dispatcher: a super user on the compose broker (KAFKA_SUPER_USERS):
#                     it creates partner topics on enrolment and produces (idempotently) to
#                     every partner, audit and order-events topic
#   one per partner   reads <prefix><partner> with the group waybill-connector.<partner>,
#                     writes <prefix><partner>.dead-letter (created here: a connector cannot
#                     create topics); nothing else, so no partner sees another's orders
#
# Settings (environment):
#   KAFKA_BOOTSTRAP         default kafka:9092          the broker's SASL_SSL listener
#   KAFKA_CA_FILE           default /pki/ca.pem         the CA that issued the broker's certificate
#   KAFKA_ADMIN_USER        default admin               a super user the broker knows (SASL/PLAIN)
#   KAFKA_ADMIN_PASSWORD    required
#   KAFKA_WAYBILL_USER      default waybill
#   KAFKA_WAYBILL_PASSWORD  required
#   KAFKA_PARTNERS          default local-express=local_express,distance-freight=distance_freight
#                           partner id = its Kafka user name, comma-separated
#   KAFKA_PASSWORD_<USER>   required for each partner user, upper-cased (KAFKA_PASSWORD_LOCAL_EXPRESS)
#   WAYBILL_TOPIC_PREFIX    default waybill.partner.    the dispatcher's --topic-prefix
#   KAFKA_BIN_DIR           default /opt/kafka/bin      where kafka-configs.sh, kafka-acls.sh, kafka-topics.sh are
# Passwords must not contain ',', '[', ']' or '=' (kafka-configs.sh's syntax).
set -eu
BOOTSTRAP="${KAFKA_BOOTSTRAP:-kafka:9092}"
CA="${KAFKA_CA_FILE:-/pki/ca.pem}"
ADMIN="${KAFKA_ADMIN_USER:-admin}"
WAYBILL_USER="${KAFKA_WAYBILL_USER:-waybill}"
PARTNERS="${KAFKA_PARTNERS:-local-express=local_express,distance-freight=distance_freight}"
PREFIX="${WAYBILL_TOPIC_PREFIX:-waybill.partner.}"
BIN="${KAFKA_BIN_DIR:-/opt/kafka/bin}"
CONFIG=$(mktemp)
trap 'rm -f "${CONFIG}"' EXIT
cat > "${CONFIG}" <<PROPS
security.protocol=SASL_SSL
ssl.truststore.type=PEM
ssl.truststore.location=${CA}
sasl.mechanism=PLAIN
sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="${ADMIN}" password="${KAFKA_ADMIN_PASSWORD:?}";
PROPS

scram_user() { # user password
  case $2 in
    *,* | *=* | *\[* | *\]*) echo "kafka-setup: the password of $1 contains ',', '[', ']' or '='" >&2; exit 64 ;;
  esac
  "${BIN}/kafka-configs.sh" --bootstrap-server "${BOOTSTRAP}" --command-config "${CONFIG}" \
    --alter --entity-type users --entity-name "$1" \
    --add-config "SCRAM-SHA-512=[iterations=8192,password=$2]" >/dev/null
}
acl() { "${BIN}/kafka-acls.sh" --bootstrap-server "${BOOTSTRAP}" --command-config "${CONFIG}" --add "$@" >/dev/null; }

scram_user "${WAYBILL_USER}" "${KAFKA_WAYBILL_PASSWORD:?}"
echo "kafka-setup: user ${WAYBILL_USER}"

for pair in $(echo "${PARTNERS}" | tr ',' ' '); do
  partner=${pair%%=*}
  user=${pair#*=}
  var="KAFKA_PASSWORD_$(echo "${user}" | tr 'a-z-' 'A-Z_')"
  password=$(printenv "${var}" || true)
  [ -n "${password}" ] || { echo "kafka-setup: set ${var}, the Kafka password of ${user}" >&2; exit 64; }
  scram_user "${user}" "${password}"
  topic="${PREFIX}${partner}"
  # The dead-letter topic exists before the connector needs it; the partner topic itself is
  # created by the dispatcher when the partner is enrolled.
  "${BIN}/kafka-topics.sh" --bootstrap-server "${BOOTSTRAP}" --command-config "${CONFIG}" \
    --create --if-not-exists --topic "${topic}.dead-letter" --partitions 1 --replication-factor 1 >/dev/null
  acl --allow-principal "User:${user}" --operation Read --operation Describe --topic "${topic}"
  acl --allow-principal "User:${user}" --operation Write --operation Describe --topic "${topic}.dead-letter"
  acl --allow-principal "User:${user}" --operation Read --group "waybill-connector.${partner}"
  echo "kafka-setup: user ${user} may read ${topic} (group waybill-connector.${partner}) and write ${topic}.dead-letter"
done
