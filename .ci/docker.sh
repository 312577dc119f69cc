#!/usr/bin/env bash
# CI step: the container test (tests/docker/compose.sh) on this machine's Docker
# engine. It says SKIPPED and passes when there is no engine; otherwise it must
# pass. Needs nothing beyond Rust and Docker (with Compose v2 or docker-compose
# v1.29); bounded by its own deadlines and, as a last resort, by this timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
# A cold release build on a small machine (bounded by the test at 20 minutes),
# the images, and the conversation (under a minute).
readonly LIMIT=25m
echo "== docker: the service as containers (tests/docker/compose.sh)"
exec timeout --kill-after=30s "$LIMIT" tests/docker/compose.sh
