#!/usr/bin/env bash
# Smoke test of the siege example (examples/siege.rs): a few seconds of stalled
# participants and silent connections against a freshly spawned chittychat-server.
# Fails if an honest participant lost a message or its session, or if a stalled
# participant's connection outlived the siege; no timing is asserted (CI machines
# are noisy). docs/hostile-peers.md's figures come from the full-size run:
#   cargo run --release --example siege -- --stalled 1000 --silent 2000 --honest 10 --duration 20 --waves 2
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== siege smoke"
cargo build --locked --quiet --bins --example siege
# Short deadlines, so that the server closes the stalled and the silent within the
# phase; bounded in time, so that a hung run fails CI instead of stalling it.
timeout 180 target/debug/examples/siege --stalled 20 --silent 50 --honest 4 --duration 5 \
    --server-args --send-timeout 1 --join-timeout 1
echo "== siege smoke passed"
