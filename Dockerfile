# syntax=docker/dockerfile:1
#
# keygate container image: a static binary on a distroless base, run as the
# non-root uid 65532 with no shell.
#
#   docker build -t keygate .
#
# The final stage is gcr.io/distroless/static with a musl build, chosen over
# gcr.io/distroless/cc with a glibc build for name resolution. A static musl
# binary resolves host names by reading /etc/hosts and /etc/resolv.conf itself,
# and the container runtime (Docker, the kubelet) mounts both files, so an
# `--upstream http://app:9000` name works with nothing else in the image. A
# glibc binary resolves through NSS instead, which reads /etc/nsswitch.conf and
# can load libnss_* modules at run time, so its behavior depends on files the
# cc image may or may not ship. With musl the final stage holds one file, and
# tests/container.rs runs that same layout (the binary alone in an empty root,
# as uid 65532) on every test run.
# NOTE: the contents of the distroless images were not inspected here, because
# no image can be pulled on the machines that run the tests.

# NOTE: the target triple names the build machine's architecture. On an
# arm64 builder pass --build-arg RUST_TARGET=aarch64-unknown-linux-musl.
ARG RUST_TARGET=x86_64-unknown-linux-musl

FROM docker.io/library/rust:1.85-bookworm AS build
ARG RUST_TARGET
WORKDIR /src
# Rust's musl targets ship their own C runtime and libc, so the Debian image's
# gcc can link a fully static binary without musl-tools.
RUN rustup target add "${RUST_TARGET}"
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --target "${RUST_TARGET}" \
    && cp "target/${RUST_TARGET}/release/keygate" /keygate

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /keygate /keygate
# keygate's own default is 127.0.0.1, which nothing outside the container
# can reach. `keygate healthcheck` reads KEYGATE_ADMIN_LISTEN and maps 0.0.0.0
# to 127.0.0.1, so move the admin port with this variable, not with the
# --admin-listen flag. For IPv6 use [::]:8080 and [::]:8081.
ENV KEYGATE_LISTEN=0.0.0.0:8080 \
    KEYGATE_ADMIN_LISTEN=0.0.0.0:8081
EXPOSE 8080 8081
# A numeric user, not the name "nonroot", so that Kubernetes' runAsNonRoot can
# verify it without reading /etc/passwd from the image.
USER 65532:65532
# Docker runs this; Kubernetes ignores HEALTHCHECK and uses the pod's probes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/keygate", "healthcheck"]
ENTRYPOINT ["/keygate"]
