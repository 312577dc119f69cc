#!/usr/bin/env bash
# CI step: the container tests on this machine's Docker engine: the service
# (tests/docker/compose.sh), then the cluster on NATS JetStream
# (tests/docker/cluster.sh). Each says SKIPPED and passes when there is no engine;
# otherwise each must pass. Needs nothing beyond Rust and Docker (with Compose v2
# or docker-compose v1.29), and for the cluster nats-server and jq; bounded by
# the tests' own deadlines and, as a last resort, by these timeouts.
set -euo pipefail
cd "$(dirname "$0")/.."
# A cold release build on a small machine (bounded by the test at 20 minutes),
# the images, and the conversation (under a minute).
readonly LIMIT=25m
# The release build is done by then; the cluster's images, its conversation and
# its faults (each bounded by the test at 90 s): a few minutes.
readonly CLUSTER_LIMIT=15m
echo "== docker: the service as containers (tests/docker/compose.sh)"
timeout --kill-after=30s "$LIMIT" tests/docker/compose.sh
echo "== docker: the cluster as containers (tests/docker/cluster.sh)"
exec timeout --kill-after=30s "$CLUSTER_LIMIT" tests/docker/cluster.sh
