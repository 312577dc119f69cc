#!/usr/bin/env bash
# Builds what `docker compose up` needs: the release binaries, statically linked so
# the images need no base image and no shared library, staged in target/docker/;
# and the log folder the containers write to, writable by their unprivileged user.
# With --cluster, also what the cluster's NATS image needs (docker/nats.Dockerfile):
# this host's nats-server and the shared libraries it is linked against, staged in
# target/docker/nats/root/ at the paths they have here.
#
# Usage: docker/build.sh             then: docker compose up
#        docker/build.sh up [ARGS]  builds, then runs Compose with these arguments
#        docker/build.sh --cluster [up [ARGS]]   the same for the cluster, whose
#            compose file is docker-compose.cluster.yml
# Environment: CHITTYCHAT_LOG_DIR, the log folder (default: logs).
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=0
if [ "${1:-}" = --cluster ]; then
    cluster=1
    shift
fi

# Debian installs nats-server in /usr/sbin, which a user's PATH may lack.
nats_server=$(command -v nats-server || true)
if [ -z "$nats_server" ] && [ -x /usr/sbin/nats-server ]; then
    nats_server=/usr/sbin/nats-server
fi
if [ "$cluster" = 1 ] && [ -z "$nats_server" ]; then
    echo "docker/build.sh: error: the cluster's NATS image is built from this host's nats-server, which is not installed (apt-get install nats-server)" >&2
    exit 1
fi

# The user the images run as (see docker/Dockerfile).
readonly CONTAINER_UID=10001

host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
    *-linux-gnu) ;;
    *)
        echo "docker/build.sh: error: the images are built from binaries linked against glibc on Linux; this host is $host" >&2
        exit 1
        ;;
esac

# --target keeps the static flag off build scripts and proc macros, and the
# static binaries in their own folder, apart from the usual target/release.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --locked --release --target "$host" \
    --bin chittychat-server --bin chittychat-client

# An empty folder the server image copies as /data, its event log's home, owned by
# the unprivileged user (a scratch image has no mkdir).
mkdir -p target/docker/data
for bin in chittychat-server chittychat-client; do
    built="${CARGO_TARGET_DIR:-target}/$host/release/$bin"
    if ldd "$built" 2>&1 | grep -q '=>'; then
        echo "docker/build.sh: error: $built is not statically linked:" >&2
        ldd "$built" >&2
        exit 1
    fi
    # The images carry no debugger; symbols would only make them bigger.
    cp "$built" "target/docker/$bin.tmp"
    strip "target/docker/$bin.tmp" 2>/dev/null || true
    mv "target/docker/$bin.tmp" "target/docker/$bin"
done

log_dir="${CHITTYCHAT_LOG_DIR:-logs}"
mkdir -p "$log_dir"
if [ "$(id -u)" = 0 ]; then
    chown "$CONTAINER_UID:$CONTAINER_UID" "$log_dir"
elif [ "$(stat -c %u "$log_dir")" != "$CONTAINER_UID" ]; then
    # A folder of this checkout only for the containers' logs.
    chmod a+rwx "$log_dir"
fi

if [ "$cluster" = 1 ]; then
    # The binary and every library `ldd` names by path (the vDSO has none), at
    # the same paths, so the loader the binary names finds them in the image.
    rm -rf target/docker/nats
    mkdir -p target/docker/nats/root/usr/sbin
    cp "$nats_server" target/docker/nats/root/usr/sbin/nats-server
    for library in $(ldd "$nats_server" 2>/dev/null | grep -o '/[^ ]*' || true); do
        mkdir -p "target/docker/nats/root$(dirname "$library")"
        # -L: a library is often a symbolic link; the image needs what it names.
        cp -L "$library" "target/docker/nats/root$library"
    done
    echo "docker/build.sh: staged $nats_server ($("$nats_server" --version)) and its libraries in target/docker/nats/root/"
fi

ls -l target/docker/chittychat-server target/docker/chittychat-client
compose_file=()
up="docker compose up"
if [ "$cluster" = 1 ]; then
    compose_file=(-f docker-compose.cluster.yml)
    up="docker compose -f docker-compose.cluster.yml up"
fi
if [ "$#" = 0 ]; then
    echo "docker/build.sh: binaries staged in target/docker/, logs go to $log_dir/; now run: $up"
    exit 0
fi
if docker compose version >/dev/null 2>&1; then
    exec docker compose "${compose_file[@]}" "$@"
elif command -v docker-compose >/dev/null 2>&1; then
    exec docker-compose "${compose_file[@]}" "$@"
fi
echo "docker/build.sh: error: neither 'docker compose' nor 'docker-compose' is installed" >&2
exit 1
