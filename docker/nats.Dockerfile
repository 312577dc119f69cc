# The NATS server of the cluster in containers (docker-compose.cluster.yml): the
# host's own nats-server (Debian's, with JetStream), which is linked against glibc,
# with the shared libraries `ldd` lists copied to the same paths. docker/build.sh
# --cluster stages them in target/docker/nats/; no base image, nothing to pull.
#
#   docker/build.sh --cluster && docker compose -f docker-compose.cluster.yml up
#
# Works with the classic builder and with BuildKit.

FROM scratch
COPY target/docker/nats/root/ /
# JetStream's store; a volume mounted here keeps the stream across containers.
COPY --chown=10001:10001 target/docker/data /data
USER 10001:10001
# Clients (the Chitty-Chat nodes) on 4222, the other NATS servers on 6222.
EXPOSE 4222 6222
ENTRYPOINT ["/usr/sbin/nats-server"]
