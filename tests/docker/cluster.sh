#!/usr/bin/env bash
# Chitty-Chat as a cluster in containers (docker-compose.cluster.yml) on a real
# Docker engine: three NATS servers holding the stream three times, three
# Chitty-Chat nodes, scripted participants spread over them. After the scripted
# conversation it kills a Chitty-Chat node, then a NATS server, then cuts a node
# off the network and puts it back; after each fault a one-off participant (a
# probe) joins, says a line and leaves. It checks that the participants of the
# faulted nodes failed over and resumed without a gap or a repeat, that every
# participant present received every event (every answered Publish among them)
# in the one order, that every join has exactly one leave, and that
# `chittychat-trace check` passes on the collected logs. It always removes what it
# started (containers, network, volumes, images), even when it fails.
#
# Exits 0 and says SKIPPED when this machine has no Docker engine; fails when the
# engine is there and anything goes wrong. Bounded in time: every wait has a
# deadline.
set -euo pipefail
cd "$(dirname "$0")/../.."

# How long the conversation, and each later wait, may take: a client cut off
# with its node notices by its keepalive (up to 20 s), a dead node's participants
# are announced within 15 s.
readonly WAIT_SECS=${CHITTYCHAT_DOCKER_WAIT_SECS:-90}
# How long one docker or compose command may take.
readonly COMMAND_SECS=300
# How long the release build may take: minutes when cold on a small machine.
readonly BUILD_SECS=${CHITTYCHAT_DOCKER_BUILD_SECS:-1200}
readonly COMPOSE_FILE=docker-compose.cluster.yml
readonly NODES=(node-1 node-2 node-3)
# Those who stay to the end, present through every fault.
readonly STAYERS=(bob carol erin)
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

readonly TEST_NAME=cluster.sh
# shellcheck source=tests/docker/lib.sh
source tests/docker/lib.sh
# The checks read the JSON logs with jq.
find_engine jq

project="chittychat-cluster-test-$$-$RANDOM"
work=$(mktemp -d "${TMPDIR:-/tmp}/chittychat-docker-cluster-test.XXXXXX")
logs="$work/logs"
export COMPOSE_PROJECT_NAME="$project"
export CHITTYCHAT_TAG="$project"
export CHITTYCHAT_LOG_DIR="$logs"

compose() { timeout "$COMMAND_SECS" "${compose_cmd[@]}" -f "$COMPOSE_FILE" -p "$project" "$@"; }

failed=0
cleanup() {
    local status=$?
    trap - EXIT
    if [ "$status" != 0 ] || [ "$failed" != 0 ]; then
        say "what the containers printed:"
        compose logs --no-color 2>&1 | tail -n 120 || true
        say "the logs are kept in $logs"
    fi
    say "removing the containers, network, volumes and images of $project"
    compose --profile probe down --volumes --remove-orphans --rmi all --timeout 5 >/dev/null 2>&1 ||
        say "warning: compose down failed"
    # Whatever compose did not remove (a build that stopped halfway, a probe).
    docker ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker network ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker network rm >/dev/null 2>&1 || true
    docker volume ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker volume rm >/dev/null 2>&1 || true
    docker image rm "chittychat-node:$project" "chittychat-client:$project" "chittychat-nats:$project" >/dev/null 2>&1 || true
    if [ "$status" = 0 ] && [ "$failed" = 0 ]; then
        rm -rf "$work"
        say "PASSED in $SECONDS s"
    else
        say "FAILED"
        status=1
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Whether a node says it serves: its own probe, run inside its container, which
# asks the gRPC health service (NOT_SERVING while the node has no NATS).
serves() { docker exec "$(container_of "$1")" /chittychat-server --health-check >/dev/null 2>&1; }
refuses() { ! serves "$1"; }

# Runs a one-off participant that joins, says "checking in" and leaves; extra
# arguments go to its client (a --server list, say). While the NATS cluster elects
# new leaders for the stream (seconds after a NATS server died) every node refuses
# with UNAVAILABLE, and the probe's client exits with EXIT_UNREACHABLE without
# having joined: then it comes again, until WAIT_SECS.
readonly EXIT_UNREACHABLE=3
probe() {
    local name=$1 status
    shift
    local deadline=$((SECONDS + WAIT_SECS))
    while :; do
        status=0
        compose run --rm --no-deps -T probe --name "$name" --script /cluster/probe.script \
            --log-file "/logs/$name.log" "$@" >>"$work/$name.out" 2>&1 || status=$?
        if [ "$status" = 0 ]; then
            return
        fi
        if [ "$status" != "$EXIT_UNREACHABLE" ] || [ "$SECONDS" -ge "$deadline" ]; then
            fail "the probe $name failed with $status: $(tail -n 3 "$work/$name.out")"
        fi
        # It never joined: its refused Joins are kept for a reader, apart from the
        # run's logs, where the next attempt (a new process) starts its own.
        mv "$logs/$name.log" "$work/$name.refused-at-$SECONDS.log" 2>/dev/null || true
        say "no node takes $name's join yet: $(grep -F 'error:' "$work/$name.out" | tail -n 1)"
        sleep 1
    done
}

# Whether every stayer received probe $1's join, line and leave.
probe_seen() {
    local name
    for name in "${STAYERS[@]}"; do
        saw_notice "$name" left "$1" || return 1
    done
}

# Checks that every stayer received probe $1's three events.
check_probe() {
    wait_until "everyone present hears $1 leave" probe_seen "$1"
    for name in "${STAYERS[@]}"; do
        saw_notice "$name" joined "$1" || fail "$name did not see $1 join"
        saw_chat "$name" "$1" "checking in" || fail "$name did not receive $1's line"
        seqs_contiguous "$name" || fail "$name's feed has a gap or a repeat: $(seqs "$name" | tr '\n' ' ')"
    done
}

# The node that stamped participant $1's last join: where it is connected now. A
# node logs the events it stamped without a node_lamport (that is for the events
# it applied from another node).
node_of() {
    local node seq best=0 at=""
    for node in "${NODES[@]}"; do
        seq=$(grep -F '"message":"broadcast"' "$logs/$node.log" 2>/dev/null |
            grep -F '"kind":"joined"' | grep -F "\"participant\":\"$1\"" |
            grep -vF '"node_lamport"' | grep -o '"seq":[0-9]*' | cut -d: -f2 | sort -n | tail -n 1)
        if [ -n "$seq" ] && [ "$seq" -gt "$best" ]; then
            best=$seq
            at=$node
        fi
    done
    echo "$at"
}

# Whether node $1 logged the event that $3 $2 (joined or left).
applied() {
    grep -F '"message":"broadcast"' "$logs/$1.log" 2>/dev/null | grep -F "\"kind\":\"$2\"" |
        grep -qF "\"participant\":\"$3\""
}

# Whether participant $1 was rejoined (its session replaced) at least $2 times.
rejoined() { saw_notice "$1" joined "$1" $(($2 + 1)); }

say "engine: Docker $(docker version -f '{{.Server.Version}}'), compose: ${compose_cmd[*]} $("${compose_cmd[@]}" version --short 2>/dev/null || true)"
say "building the static binaries and staging nats-server (docker/build.sh --cluster)"
timeout "$BUILD_SECS" docker/build.sh --cluster

say "building the images and starting project $project"
compose build --quiet
# The nodes first: each serves once the NATS cluster has its JetStream leader
# (until then it exits and Docker starts it again); the participants then join.
compose up -d nats-1 nats-2 nats-3 "${NODES[@]}"
for node in "${NODES[@]}"; do
    wait_until "$node serves" serves "$node"
done
say "three NATS servers and three nodes serve"
compose up -d

say "waiting for the scripted conversation"
wait_until "dave leaves" exited dave
[ "$(exit_code dave)" = 0 ] || fail "dave's client exited with $(exit_code dave)"
for name in bob carol; do
    wait_until "$name hears the last line" saw_chat "$name" carol "Fine by me"
    for line in "${LINES[@]}"; do
        saw_chat "$name" "${line%%: *}" "${line#*: }" || fail "$name did not receive \"$line\""
    done
done
wait_until "erin joins" saw_notice erin joined erin
probe probe-0
check_probe probe-0
say "the conversation is over; every participant joined its own node, one order everywhere"

say "killing node-1 (bob's node) with SIGKILL"
# No restart: the node stays dead, as a crashed machine does.
docker update --restart=no "$(container_of node-1)" >/dev/null
docker kill "$(container_of node-1)" >/dev/null
wait_until "bob fails over and resumes" rejoined bob 1
probe probe-1
check_probe probe-1
say "bob moved to another node and resumed; everyone present heard probe-1"

say "killing nats-1 with SIGKILL: the stream lives on two of its three servers"
docker kill "$(container_of nats-1)" >/dev/null
for node in node-2 node-3; do
    wait_until "$node serves on the other NATS servers" serves "$node"
done
probe probe-2
check_probe probe-2
say "the cluster works on two NATS servers; everyone present heard probe-2"

network=$(docker network ls -q --filter "label=com.docker.compose.project=$project" | head -n 1)
[ -n "$network" ] || fail "the project has no network"
# carol's node is cut off (node-2, unless losing nats-1 moved her on), and with it
# everyone there.
cut=$(node_of carol)
[ -n "$cut" ] || fail "no node logged carol's last join"
cut_id=$(container_of "$cut")
moved=()
moves=()
for name in "${STAYERS[@]}"; do
    if [ "$(node_of "$name")" = "$cut" ]; then
        moved+=("$name")
        moves+=("$(($(notices "$name" joined "$name") - 1))")
    fi
done
say "cutting $cut off the network (docker network disconnect), and with it ${moved[*]}"
docker network disconnect "$network" "$cut_id"
wait_until "$cut, cut off from NATS, refuses" refuses "$cut"
# Its participants are cut off with it: their keepalive notices, they fail over.
for i in "${!moved[@]}"; do
    wait_until "${moved[i]} fails over from $cut" rejoined "${moved[i]}" $((moves[i] + 1))
done
probe probe-3
check_probe probe-3
say "$cut refused; ${moved[*]} moved on and resumed; everyone present heard probe-3"

say "connecting $cut again"
docker network connect --alias "$cut" "$network" "$cut_id"
wait_until "$cut serves again" serves "$cut"
# Its health says SERVING once it has NATS again, which can be before its reader
# reads the log again (making a consumer may time out at first); a Join there
# until then waits and times out. It is back once it has applied what it missed.
wait_until "$cut reads what it missed" applied "$cut" left probe-3
probe probe-4 --server "http://$cut:50051"
check_probe probe-4
say "$cut rejoined the cluster and serves; everyone present heard probe-4 through it"

say "stopping the rest (SIGTERM): the participants leave, the nodes shut down"
compose stop --timeout 10 >/dev/null 2>&1
for name in "${STAYERS[@]}"; do
    [ "$(exit_code "$name")" = 0 ] || fail "$name's client exited with $(exit_code "$name") on SIGTERM"
done
for node in node-2 node-3; do
    [ "$(exit_code "$node")" = 0 ] || fail "$node exited with $(exit_code "$node") on SIGTERM"
done
for file in "$logs"/*.log; do
    [ -s "$file" ] || fail "$file is empty"
    if grep -v '^{.*}$' "$file" | grep -q .; then
        fail "$(basename "$file") has lines that are not JSON objects"
    fi
done
participants=(bob carol dave erin probe-0 probe-1 probe-2 probe-3 probe-4)
for name in "${participants[@]}"; do
    [ -s "$logs/$name.log" ] || fail "no log from $name"
done
say "every container wrote JSON logs to the mounted folder: $(cd "$logs" && ls | tr '\n' ' ')"

# The events, once each by sequence number, from every node's broadcast lines (a
# node logs every event of the stream it applies, its own and the others').
events="$work/events"
cat "$logs"/node-*.log | grep -F '"message":"broadcast"' |
    jq -r '[.seq, .kind, .participant, (.cause // ""), .text] | @tsv' | sort -n -u >"$events"
[ -s "$events" ] || fail "the nodes logged no broadcasts"
# Two nodes must agree on every event: one line a sequence number.
duplicates=$(cut -f1 "$events" | uniq -d | tr '\n' ' ')
[ -z "$duplicates" ] || fail "the nodes logged different events under the same sequence numbers: $duplicates"
last=$(tail -n 1 "$events" | cut -f1)
[ "$(wc -l <"$events")" = "$last" ] || fail "the nodes' logs miss events: $(wc -l <"$events") of $last"

# Every join has exactly one leave (a replaced session's leave included).
for name in "${participants[@]}"; do
    joins=$(awk -F'\t' -v who="$name" '$2 == "joined" && $3 == who' "$events" | wc -l)
    leaves=$(awk -F'\t' -v who="$name" '$2 == "left" && $3 == who' "$events" | wc -l)
    [ "$joins" -ge 1 ] && [ "$joins" = "$leaves" ] ||
        fail "$name joined $joins times and left $leaves times"
done
say "every join has exactly one leave: $(awk -F'\t' '$2 == "left" { print $4 }' "$events" | sort | uniq -c | tr -s ' \n' ' ')"

# Nothing answered is lost: every Publish a client heard answered is an event,
# and every stayer received every event from its first join on, in order (its
# feed has no gap and no repeat, see above) and as the nodes logged it.
answered=0
for name in "${participants[@]}"; do
    for seq in $(grep -F '"message":"reply"' "$logs/$name.log" | grep -F '"rpc":"Publish"' |
        grep -o '"seq":[0-9]*' | cut -d: -f2); do
        answered=$((answered + 1))
        awk -F'\t' -v seq="$seq" -v who="$name" '$1 == seq && $2 == "chat" && $3 == who { found = 1 } END { exit !found }' "$events" ||
            fail "$name's Publish answered with seq $seq is not that event in the nodes' logs"
        for stayer in "${STAYERS[@]}"; do
            first=$(seqs "$stayer" | head -n 1)
            [ "$seq" -lt "$first" ] && continue
            seqs "$stayer" | grep -qx "$seq" || fail "$stayer did not receive $name's answered line $seq"
        done
    done
done
for name in "${participants[@]}"; do
    seqs_contiguous "$name" || fail "$name's feed has a gap or a repeat: $(seqs "$name" | tr '\n' ' ')"
    # What a participant received is what the nodes logged, at the same number.
    received "$name" | jq -r '[.seq, .kind, .participant] | @tsv' |
        while IFS=$'\t' read -r seq kind who; do
            awk -F'\t' -v seq="$seq" -v kind="$kind" -v who="$who" \
                '$1 == seq && $2 == kind && $3 == who { found = 1 } END { exit !found }' "$events" ||
                { echo "$name received $kind $who as $seq"; exit 1; }
        done || fail "$name received an event the nodes logged otherwise"
done
say "nothing answered is lost: $answered answered lines, each received by every participant present, one order everywhere"

say "running chittychat-trace check on the logs"
timeout "$COMMAND_SECS" cargo run --locked --quiet --bin chittychat-trace -- check "$logs" ||
    fail "chittychat-trace check found violations in the containers' logs"
