# One image for every Waybill process; the compose file picks the subcommand.
FROM rust:1-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends zlib1g-dev && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked -p waybill

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 waybill
COPY --from=build /src/target/release/waybill /usr/local/bin/waybill
USER waybill
ENTRYPOINT ["/usr/local/bin/waybill"]
