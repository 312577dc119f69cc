# A node of the cluster in containers (docker-compose.cluster.yml): the server's
# image (docker/Dockerfile) without its data directory, for a node's log is in
# memory, rebuilt from the NATS stream, and a set CHITTYCHAT_DATA_DIR would clash
# with CHITTYCHAT_NATS (Compose cannot unset a variable the image sets, and an
# empty one is a missing value). A file of its own, so that building it builds no
# other stage.
#
#   docker/build.sh --cluster && docker compose -f docker-compose.cluster.yml up
#
# Works with the classic builder and with BuildKit.

FROM scratch
COPY target/docker/chittychat-server /chittychat-server
USER 10001:10001
ENV CHITTYCHAT_LISTEN=0.0.0.0:50051
EXPOSE 50051
# The probe is built into the server binary; it reports NOT_SERVING while the node
# has no NATS.
HEALTHCHECK --interval=5s --timeout=5s --retries=3 CMD ["/chittychat-server", "--health-check"]
ENTRYPOINT ["/chittychat-server"]
