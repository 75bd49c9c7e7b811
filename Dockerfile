# hookrelay: a static binary on an empty base image.
#
#   docker build -t hookrelay .
#   docker run --rm hookrelay check --config /etc/hookrelay/config.yaml
#   mkdir -p hookrelay && cp config.example.yaml hookrelay/config.yaml
#   docker run -d --name hookrelay --network host --read-only -v "$PWD/hookrelay:/etc/hookrelay:ro" -v hookrelay-data:/var/lib/hookrelay hookrelay
#
# CI builds the binary once and skips the builder stage (no image is pulled):
#   podman build --build-context builder=DIR --target runtime .
# where DIR holds what docker/rootfs.sh lays out under /rootfs.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# glibc, linked statically (the final image has no libc); an explicit target keeps
# build scripts and proc macros dynamically linked, as they must be.
ENV RUSTFLAGS="-C target-feature=+crt-static" \
    TARGET=x86_64-unknown-linux-gnu
# Dependencies first, in their own layer: rebuilt only when Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src bench/e2e \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > bench/e2e/main.rs \
    && cp bench/e2e/main.rs bench/matching.rs \
    && cargo build --release --locked --target "$TARGET" \
    && rm -rf src bench
COPY build.rs build.rs
COPY src src
COPY bench bench
COPY docker docker
# There is no .git here: hookrelay_build_info's commit label comes from this argument
# (docker build --build-arg HOOKRELAY_COMMIT=$(git rev-parse --short HEAD) .), else "unknown".
ARG HOOKRELAY_COMMIT
# touch: the stub sources above are newer than the real ones' checkout times.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --target "$TARGET" \
    && docker/rootfs.sh "target/$TARGET/release/hookrelay" /rootfs

FROM scratch AS runtime
COPY --from=builder /rootfs/etc/ /etc/
COPY --from=builder /rootfs/hookrelay /usr/local/bin/hookrelay
# The data volume and /tmp belong to the relay's user; the rest stays root's, read-only.
COPY --from=builder --chown=10001:10001 /rootfs/var/lib/hookrelay/ /var/lib/hookrelay/
COPY --from=builder --chown=10001:10001 /rootfs/tmp/ /tmp/
USER 10001:10001
# Relative paths (storage.path ./data/hookrelay.db) land on the data volume.
WORKDIR /var/lib/hookrelay
VOLUME ["/var/lib/hookrelay"]
# app (ingest), api (subscriptions, pull queues), ops (/metrics, /healthz, /readyz).
EXPOSE 8787 8788 9464
ENTRYPOINT ["/usr/local/bin/hookrelay"]
CMD ["run", "--config", "/etc/hookrelay/config.yaml"]
