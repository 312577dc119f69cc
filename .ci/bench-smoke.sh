#!/usr/bin/env bash
# Smoke test of chittychat-bench: a few seconds of each mode against a freshly
# spawned chittychat-server. chittychat-bench exits non-zero when any event is lost,
# duplicated or reordered or any call fails; no timing is asserted (CI machines are
# noisy).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== chittychat-bench smoke"
cargo build --locked --quiet --bins
bench=target/debug/chittychat-bench
run() {
    echo "-- chittychat-bench $*"
    # Bounded in time: a hung run fails CI instead of stalling it.
    timeout 120 "$bench" "$@"
}
run saturate --participants 20 --publishers 2 --warmup 0.5 --duration 2
run saturate --participants 20 --publishers 2 --warmup 0.5 --duration 2 --publish-over stream
run rate --participants 20 --rate 200 --warmup 0.5 --duration 2
run idle --participants 50
run join-storm --participants 200 --json
run resume --participants 2 --missed 500
run restart --participants 2 --publishers 2 --events 2000
run history-join --participants 20 --history 50 --joins 20
echo "== chittychat-bench smoke passed"
