# hubmesh node image: a multi-stage build, a small runtime image without a shell, run as a non-root user.
#
#   docker build -t hubmesh .
#   docker run --rm -p 5000:5000 hubmesh            # one node serving the demo hub
#
# Settings come from HUBMESH_* environment variables (cluster-config/README.md); deploy/ has a three-node
# docker-compose file and Kubernetes manifests. Ports: HTTP 5000/tcp, gossip 7000/udp, links 7100/tcp.
# tests/deploy.rs checks this file against the node's configuration keys and the manifests.

FROM rust:1.89-bookworm AS build
# aws-lc-rs (rustls' crypto, through ractor_cluster) builds C code; cmake covers the toolchains that need it.
# jemalloc (the binary's allocator, cli/src/main.rs) builds with gcc and make, which the image has.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p hubmesh-cli --bin hubmesh \
    && cp target/release/hubmesh /hubmesh

# distroless "cc": glibc and libgcc only, no shell, no package manager; the "nonroot" tag runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /hubmesh /usr/local/bin/hubmesh
USER 65532:65532
ENV HUBMESH_HTTP__LISTEN=0.0.0.0:5000
EXPOSE 5000/tcp 7000/udp 7100/tcp
ENTRYPOINT ["/usr/local/bin/hubmesh"]
CMD ["node"]
