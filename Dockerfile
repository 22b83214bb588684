# Multi-stage build: compile with the Rust toolchain, run on distroless (no shell, no package
# manager) as the non-root user 65532. Not built in CI here (no Docker engine on these machines).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
COPY crds ./crds
# Without the default `sandbox` feature: no emulators, no demo, no CEL interpreter in the image
# (.ci/image_check.sh builds with this same line and checks it).
RUN cargo build --release --locked --no-default-features --features jemalloc --bin dbx-identity-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/dbx-identity-operator /usr/local/bin/dbx-identity-operator
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/dbx-identity-operator"]
CMD ["run"]
