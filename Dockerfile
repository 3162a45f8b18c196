# consort node image (docs/deploy.md, "Containers"):
#   docker build -t consort .
#   docker run --rm -v consort-bank:/var/lib/consort/node consort init /var/lib/consort/node --name bank --listen 0.0.0.0:7001
#   docker run -d --name consort-bank -v consort-bank:/var/lib/consort/node -p 7001:7001 consort
# CI lints this file (.ci/lint-docker, hadolint) but cannot build it: it has no registry for
# base images.

# Builder: the Rust toolchain (the same release CI uses) builds `consort` from the committed
# Cargo.lock. The cache mounts keep crates and build outputs between builds on one machine.
FROM rust:1.95-slim-trixie AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p consort-node \
    && install -m 0755 target/release/consort /usr/local/bin/consort

# Runtime: Debian slim (the builder's Debian release, so the same glibc), the binary and an
# unprivileged user; nothing is installed and nothing is fetched at run time.
FROM debian:trixie-slim
RUN useradd --system --no-log-init --uid 10001 --user-group --home-dir /var/lib/consort \
        --shell /usr/sbin/nologin consort \
    && install -d -m 0700 -o consort -g consort /var/lib/consort /var/lib/consort/node /var/lib/consort/key
COPY --from=builder /usr/local/bin/consort /usr/local/bin/consort
USER 10001:10001
WORKDIR /var/lib/consort
# The node directory: config, keys (0600), audit log, job table, the responder's outputs.
# (/var/lib/consort/key is for a storage key kept outside it, on a volume of its own.)
VOLUME ["/var/lib/consort/node"]
# The peer service (TLS 1.3); `consort init ... --listen 0.0.0.0:7001` binds it.
EXPOSE 7001
# /healthz of the node's metrics endpoint, which the default command serves on the container's
# loopback. No curl in the image: bash's /dev/tcp sends the request (bash is part of every
# Debian system).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9464 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && read -r _ code _ <&3 && [ \"$code\" = 200 ]"]
ENTRYPOINT ["consort"]
CMD ["node", "/var/lib/consort/node", "--metrics", "127.0.0.1:9464", "--log-format", "json"]
