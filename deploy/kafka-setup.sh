#!/bin/sh
# One-shot: the Kafka ACLs that keep each partner to its own orders. Runs in the Kafka image
# against the SASL listener as the `admin` super user, after the broker is healthy; idempotent
# (adding an ACL that exists changes nothing).
#
# Principals (SASL/PLAIN users configured on the broker, see docker-compose.yml):
#   waybill           the dispatcher: a super user (creates partner topics on enrolment,
#                     produces transactionally to every partner, audit and order-events topic)
#   local_express     reads waybill.partner.local-express with its consumer group, writes its
#   distance_freight  dead-letter topic; nothing else: a partner cannot see, consume or write
#                     another partner's topic.
set -eu
BOOTSTRAP="${KAFKA_BOOTSTRAP:-kafka:9092}"
PREFIX="${WAYBILL_TOPIC_PREFIX:-waybill.partner.}"
BIN=/opt/kafka/bin
CONFIG=$(mktemp)
cat > "${CONFIG}" <<PROPS
security.protocol=SASL_PLAINTEXT
sasl.mechanism=PLAIN
sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="${KAFKA_ADMIN_PASSWORD:?}";
PROPS

acl() { "${BIN}/kafka-acls.sh" --bootstrap-server "${BOOTSTRAP}" --command-config "${CONFIG}" --add "$@" >/dev/null; }

for pair in local-express:local_express distance-freight:distance_freight; do
  partner=${pair%%:*}
  user=${pair#*:}
  topic="${PREFIX}${partner}"
  # The dead-letter topic exists before the connector needs it (the connector cannot create
  # topics); the partner topic itself is created by the dispatcher when the partner is enrolled.
  "${BIN}/kafka-topics.sh" --bootstrap-server "${BOOTSTRAP}" --command-config "${CONFIG}" \
    --create --if-not-exists --topic "${topic}.dead-letter" --partitions 1 --replication-factor 1 >/dev/null
  acl --allow-principal "User:${user}" --operation Read --operation Describe --topic "${topic}"
  acl --allow-principal "User:${user}" --operation Write --operation Describe --topic "${topic}.dead-letter"
  acl --allow-principal "User:${user}" --operation Read --group "waybill-connector.${partner}"
  echo "kafka-setup: ${user} may read ${topic} (group waybill-connector.${partner}) and write ${topic}.dead-letter"
done
rm -f "${CONFIG}"
