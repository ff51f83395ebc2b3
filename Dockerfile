# One image for every Waybill process; the compose file picks the subcommand.
FROM rust:1-bookworm AS build
WORKDIR /src
# librdkafka is built from source with the system's OpenSSL (TLS, SASL SCRAM) and zlib.
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked -p waybill

FROM debian:bookworm-slim
# libssl3: librdkafka's TLS at run time; ca-certificates: public CAs (e.g. a managed Kafka's or
# Postgres's certificate, or an OTLP endpoint's).
# /var/lib/waybill: the partners' inboxes; it belongs to the image's user, so a named volume
# mounted there starts out owned by it too.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 waybill \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/waybill waybill \
    && mkdir -p /var/lib/waybill \
    && chown 10001:10001 /var/lib/waybill \
    && chmod 700 /var/lib/waybill
COPY --from=build /src/target/release/waybill /usr/local/bin/waybill
USER 10001:10001
WORKDIR /var/lib/waybill
ENTRYPOINT ["/usr/local/bin/waybill"]
