#!/usr/bin/env bash
# The whole of Chitty-Chat as containers on a real Docker engine: builds the images
# (docker/build.sh, then compose), brings the compose project up under a unique
# name, waits for the scripted conversation to finish, checks that every
# participant saw every message and the join and leave notices, kills one
# participant's container and checks the other is told it left, runs
# `chittychat-trace check` on the collected logs, and always removes what it
# started (containers, network, images) even when it fails.
#
# Exits 0 and says SKIPPED when this machine has no Docker engine; fails when the
# engine is there and anything goes wrong. Bounded in time: every wait has a
# deadline.
set -euo pipefail
cd "$(dirname "$0")/../.."

# How long the conversation, and each later wait, may take.
readonly WAIT_SECS=${CHITTYCHAT_DOCKER_WAIT_SECS:-90}
# How long one docker or compose command may take.
readonly COMMAND_SECS=300
# How long the release build may take: minutes when cold on a small machine.
readonly BUILD_SECS=${CHITTYCHAT_DOCKER_BUILD_SECS:-1200}
readonly PARTICIPANTS=(bob carol dave)
# The conversation in docker/conversation/, line by line, as "participant: text".
readonly LINES=(
    "bob: Hello carol and dave, bob here"
    "carol: Hi bob, hi dave"
    "dave: Hi both, I can only stay a moment"
    "bob: Too bad, dave. What time is it in Lamport land?"
    "dave: Later than you think. Bye!"
    "bob: Bye dave. carol, it is just us now"
    "carol: Fine by me"
)
# dave leaves after saying this line, so he sees the lines up to it.
readonly DAVE_SEES=5

readonly TEST_NAME=compose.sh
# shellcheck source=tests/docker/lib.sh
source tests/docker/lib.sh
find_engine

project="chittychat-test-$$-$RANDOM"
work=$(mktemp -d "${TMPDIR:-/tmp}/chittychat-docker-test.XXXXXX")
logs="$work/logs"
export COMPOSE_PROJECT_NAME="$project"
export CHITTYCHAT_TAG="$project"
export CHITTYCHAT_LOG_DIR="$logs"
# Any free host port, so the test never collides with a running server.
export CHITTYCHAT_PORT=0

compose() { timeout "$COMMAND_SECS" "${compose_cmd[@]}" -p "$project" "$@"; }

failed=0
cleanup() {
    local status=$?
    trap - EXIT
    if [ "$status" != 0 ] || [ "$failed" != 0 ]; then
        say "what the containers printed:"
        compose logs --no-color 2>&1 | tail -n 80 || true
        say "the logs are kept in $logs"
    fi
    say "removing the containers, network and images of $project"
    compose down --volumes --remove-orphans --rmi all --timeout 5 >/dev/null 2>&1 ||
        say "warning: compose down failed"
    # Whatever compose did not remove (a build that stopped halfway, say).
    docker ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker network ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker network rm >/dev/null 2>&1 || true
    docker image rm "chittychat-server:$project" "chittychat-client:$project" >/dev/null 2>&1 || true
    if [ "$status" = 0 ] && [ "$failed" = 0 ]; then
        rm -rf "$work"
        say "PASSED"
    else
        say "FAILED"
        status=1
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "engine: Docker $(docker version -f '{{.Server.Version}}'), compose: ${compose_cmd[*]} $("${compose_cmd[@]}" version --short 2>/dev/null || true)"
say "building the static binaries (docker/build.sh)"
timeout "$BUILD_SECS" docker/build.sh

say "building the images and starting project $project"
compose build --quiet
compose up -d
server_id=$(container_of server)
[ "$(docker inspect -f '{{.State.Health.Status}}' "$server_id")" = healthy ] ||
    fail "the server container is not healthy"
say "the server is healthy (its health check is chittychat-server --health-check)"

say "waiting for the scripted conversation"
wait_until "dave leaves" exited dave
[ "$(exit_code dave)" = 0 ] || fail "dave's client exited with $(exit_code dave)"
for name in bob carol; do
    wait_until "$name hears the last line" saw_chat "$name" carol "Fine by me"
done
say "the conversation is over; every participant found the server by its service name"

for name in "${PARTICIPANTS[@]}"; do
    saw_notice "$name" joined "$name" || fail "$name did not see its own join notice"
    seen=${#LINES[@]}
    [ "$name" = dave ] && seen=$DAVE_SEES
    for line in "${LINES[@]:0:$seen}"; do
        saw_chat "$name" "${line%%: *}" "${line#*: }" || fail "$name did not receive \"$line\""
    done
    seqs_contiguous "$name" || fail "$name missed events: the sequence numbers it received have a gap"
done
for name in bob carol; do
    saw_notice "$name" left dave || fail "$name was not told that dave left"
done
# Whoever joined before another saw that one's join notice.
joined_order=$(grep -F '"message":"broadcast"' "$logs/server.log" | grep -F '"kind":"joined"' |
    grep -o '"participant":"[a-z]*"' | cut -d'"' -f4 | tr '\n' ' ')
read -r -a order <<<"$joined_order"
[ "${#order[@]}" = 3 ] || fail "the server logged ${#order[@]} joins, not 3: $joined_order"
for ((i = 0; i < 3; i++)); do
    for ((j = i + 1; j < 3; j++)); do
        saw_notice "${order[i]}" joined "${order[j]}" ||
            fail "${order[i]} did not see ${order[j]} join after it"
    done
done
say "every participant saw every message, the join notices of those who came after it, and dave leave (join order: $joined_order)"

say "killing bob's container"
docker kill "$(container_of bob)" >/dev/null
wait_until "carol is told bob left" saw_notice carol left bob
grep -F '"message":"broadcast"' "$logs/server.log" | grep -F '"cause":"disconnected"' |
    grep -qF '"participant":"bob"' || fail "the server did not log bob's leave as a disconnection"
say "carol was told that bob left"

say "stopping the rest (SIGTERM): carol leaves, the server shuts down"
compose stop --timeout 10 >/dev/null 2>&1
[ "$(exit_code carol)" = 0 ] || fail "carol's client exited with $(exit_code carol) on SIGTERM"
[ "$(exit_code server)" = 0 ] || fail "the server exited with $(exit_code server) on SIGTERM"
for file in server bob carol dave; do
    [ -s "$logs/$file.log" ] || fail "no log from $file in $logs"
    if grep -v '^{.*}$' "$logs/$file.log" | grep -q .; then
        fail "$file.log has lines that are not JSON objects"
    fi
done
say "every container wrote JSON logs to the mounted folder: $(cd "$logs" && ls | tr '\n' ' ')"

say "running chittychat-trace check on the logs"
timeout "$COMMAND_SECS" cargo run --locked --quiet --bin chittychat-trace -- check "$logs" ||
    fail "chittychat-trace check found violations in the containers' logs"
