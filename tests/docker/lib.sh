# shellcheck shell=bash
# What the container tests (compose.sh, cluster.sh) share: finding a Docker engine
# and Compose, failing, waiting with a deadline, and reading the participants' JSON
# logs. Sourced after the test sets TEST_NAME and WAIT_SECS; the functions read the
# test's `project`, `logs` and `failed` when they run.

say() { echo "tests/docker/$TEST_NAME: $*"; }

# Exits 0 (SKIPPED) without a Docker engine; sets `compose_cmd` to whichever
# Compose spelling this machine has ("docker compose" or "docker-compose"), or
# fails when it has neither. Extra arguments name commands the test also needs.
find_engine() {
    if ! command -v docker >/dev/null 2>&1; then
        say "SKIPPED: there is no docker command on this machine, so no Docker engine to test on"
        exit 0
    fi
    local engine_error
    if ! engine_error=$(docker info 2>&1 >/dev/null); then
        say "SKIPPED: no Docker engine answers on this machine: $(echo "$engine_error" | tail -n 1)"
        exit 0
    fi
    local tool
    for tool in "$@"; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            say "FAILED: the Docker engine is there but $tool is not (apt-get install $tool)" >&2
            exit 1
        fi
    done
    if docker compose version >/dev/null 2>&1; then
        compose_cmd=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then
        compose_cmd=(docker-compose)
    else
        say "FAILED: the Docker engine is there but Docker Compose is not (neither 'docker compose' nor 'docker-compose')" >&2
        exit 1
    fi
}

fail() {
    failed=1
    say "FAILED: $*" >&2
    exit 1
}

# The container of a compose service, running or not.
container_of() {
    docker ps -aq --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.service=$1" | head -n 1
}

# Waits until the command given succeeds, or fails the test after WAIT_SECS.
wait_until() {
    local what=$1
    shift
    local deadline=$((SECONDS + WAIT_SECS))
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail "$what: not within $WAIT_SECS s"
        fi
        sleep 0.5
    done
}

exited() {
    local id
    id=$(container_of "$1")
    [ -n "$id" ] && [ "$(docker inspect -f '{{.State.Status}}' "$id")" = exited ]
}

exit_code() { docker inspect -f '{{.State.ExitCode}}' "$(container_of "$1")"; }

# The events a participant received, one JSON line each, from its log.
received() { grep -F '"message":"received"' "$logs/$1.log" 2>/dev/null || true; }

# Whether participant $1 received a chat line "$2: $3".
saw_chat() {
    received "$1" | grep -F '"kind":"chat"' | grep -F "\"participant\":\"$2\"" |
        grep -qF "\"text\":\"$3\""
}

# How many notices that $3 $2 (joined or left) participant $1 received.
notices() {
    received "$1" | grep -F "\"kind\":\"$2\"" | grep -cF "\"participant\":\"$3\"" || true
}

# Whether participant $1 received the notice that $3 $2, at least $4 times (1).
saw_notice() { [ "$(notices "$1" "$2" "$3")" -ge "${4:-1}" ]; }

# The sequence numbers participant $1 received, in the order received.
seqs() { received "$1" | grep -o '"seq":[0-9]*' | cut -d: -f2; }

# Whether participant $1 received events without a gap and without a repeat: the
# server numbers every event, and a resumed feed carries on where it stopped.
seqs_contiguous() {
    seqs "$1" | awk 'NR > 1 && $1 != prev + 1 { exit 1 } { prev = $1 } END { if (NR == 0) exit 1 }'
}
