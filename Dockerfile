# syntax=docker/dockerfile:1
# aa-token-broker: a static musl build on a pinned Rust toolchain, shipped on distroless/static (CA
# certificates, /etc/passwd with the nonroot user, nothing else). Runs as UID 65532 and needs no writable
# root filesystem: docker run --read-only works.

ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
# The musl target of the platform being built (buildx sets TARGETARCH: amd64 or arm64); the build stage
# runs on that platform (natively, or emulated), so musl-tools' compiler is the right one. TARGET
# overrides it.
ARG TARGETARCH
ARG TARGET=
# musl-tools: the C compiler for ring's assembly and C parts on the musl target.
RUN case "${TARGET:-${TARGETARCH:-amd64}}" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "${TARGET}" ;; \
    esac > /rust-target \
 && apt-get update \
 && apt-get install -y --no-install-recommends musl-tools=1.2.3-1 \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src

# Built without the `simulator` feature: the image serves, it does not play the IAM (`demo` and
# `iam-simulator` exit 2 in it), and it holds none of the simulator's fixed private keys.
# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src bench \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > bench/floor.rs \
 && echo 'fn main() {}' > bench/load.rs \
 && cargo build --release --locked --no-default-features --target "$(cat /rust-target)" --bin aa-token-broker \
 && rm -rf src bench

COPY build.rs ./
COPY src ./src
COPY bench ./bench
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --no-default-features --target "$(cat /rust-target)" --bin aa-token-broker \
 && cp "target/$(cat /rust-target)/release/aa-token-broker" /aa-token-broker

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /aa-token-broker /usr/local/bin/aa-token-broker
USER 65532:65532
EXPOSE 7373
# The probes cannot use curl here: the binary checks itself (GET /readyz on its own listen address).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s CMD ["aa-token-broker", "healthcheck"]
ENTRYPOINT ["aa-token-broker"]
CMD ["serve"]
