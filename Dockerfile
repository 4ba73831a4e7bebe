# The customer service. Build: docker build -t customers .
# Runs as an unprivileged user; needs DATABASE_URL (the image has no
# PostgreSQL, so the embedded development mode is not available in it).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The same release build CI runs and smoke-tests.
RUN scripts/build-release

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin customers
COPY --from=build /src/target/release/customers /usr/local/bin/customers
USER 10001:10001
# gRPC, then Prometheus metrics.
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/customers"]
CMD ["serve"]
