# syntax=docker/dockerfile:1
#
# loxone-exporter container image: static-ish Rust binary on distroless, non-root, no shell.
#
#   docker build -t loxone-exporter \
#     --build-arg VERSION=$(git describe --tags --always) \
#     --build-arg COMMIT=$(git rev-parse --short=12 HEAD) \
#     --build-arg BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ) .
#
# VERSION / COMMIT / BUILD_DATE end up in `loxone-exporter --version` and in
# loxone_exporter_build_info (build.rs reads LOXONE_EXPORTER_*).

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-slim-bookworm AS build
ARG VERSION=""
ARG COMMIT=""
ARG BUILD_DATE=""
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    LOXONE_EXPORTER_VERSION="${VERSION}" \
    LOXONE_EXPORTER_COMMIT="${COMMIT}" \
    LOXONE_EXPORTER_BUILD_DATE="${BUILD_DATE:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}" \
    cargo build --release --locked --bin loxone-exporter \
 && install -m 0755 target/release/loxone-exporter /loxone-exporter \
 && /loxone-exporter --version

# glibc, libgcc and CA certificates, nothing else; runs as uid/gid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=""
ARG COMMIT=""
ARG BUILD_DATE=""
LABEL org.opencontainers.image.title="loxone-exporter" \
      org.opencontainers.image.description="Loxone Miniserver live values to Prometheus and OpenTelemetry" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.created="${BUILD_DATE}"
COPY --from=build /loxone-exporter /loxone-exporter
# The configuration is read from /app/config.yml (mount it there), as with the Python image.
WORKDIR /app
USER nonroot:nonroot
EXPOSE 9504
# Asks /healthz on the configured listen address/port; unhealthy when no Miniserver is
# connected (HTTP 503) or the exporter does not answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/loxone-exporter", "healthcheck"]
ENTRYPOINT ["/loxone-exporter"]
