#!/usr/bin/env bash
# Builds what `docker compose up` needs: the release binaries, statically linked so
# the images need no base image and no shared library, staged in target/docker/;
# and the log folder the containers write to, writable by their unprivileged user.
#
# Usage: docker/build.sh             then: docker compose up
#        docker/build.sh up [ARGS]  builds, then runs Compose with these arguments
# Environment: CHITTYCHAT_LOG_DIR, the log folder (default: logs).
set -euo pipefail
cd "$(dirname "$0")/.."

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

ls -l target/docker/chittychat-server target/docker/chittychat-client
if [ "$#" = 0 ]; then
    echo "docker/build.sh: binaries staged in target/docker/, logs go to $log_dir/; now run: docker compose up"
    exit 0
fi
if docker compose version >/dev/null 2>&1; then
    exec docker compose "$@"
elif command -v docker-compose >/dev/null 2>&1; then
    exec docker-compose "$@"
fi
echo "docker/build.sh: error: neither 'docker compose' nor 'docker-compose' is installed" >&2
exit 1
