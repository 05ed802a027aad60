# syntax=docker/dockerfile:1
# Multi-stage build: compile with the Rust toolchain, run on a small glibc image
# (NVML's libnvidia-ml.so.1 is glibc-linked and is mounted by the NVIDIA container
# runtime at run time, not shipped here).

FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build outputs between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin bindlet \
    && install -D -m 0755 target/release/bindlet /out/bindlet

# distroless "cc": glibc, libgcc, CA certificates, no shell; user 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/bindlet /usr/local/bin/bindlet
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/bindlet", "run"]
