#!/usr/bin/env bash
# Runs every cargo-fuzz target of Chitty-Chat for a short, bounded time
# (FUZZ_SECONDS each, 30 by default) from the committed corpus in fuzz/corpus.
# Fuzzing needs a nightly toolchain (FUZZ_TOOLCHAIN, "nightly" by default) and
# cargo-fuzz: without that toolchain, or when cargo-fuzz cannot be installed, it
# says so and skips. A crash fails the run and
# leaves the input in fuzz/artifacts/<target>/. Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"

# Use the toolchain if it is there; never download one.
if ! RUSTUP_AUTO_INSTALL=0 cargo "+$toolchain" --version >/dev/null 2>&1; then
    echo "== fuzz: SKIPPED: no $toolchain toolchain (rustup toolchain install $toolchain)"
    exit 0
fi
if ! cargo "+$toolchain" fuzz --version >/dev/null 2>&1; then
    echo "== fuzz: installing cargo-fuzz"
    if ! timeout 1200 cargo install cargo-fuzz --locked; then
        echo "== fuzz: SKIPPED: cargo-fuzz could not be installed"
        exit 0
    fi
fi

echo "== fuzz: building the targets"
timeout 1800 cargo "+$toolchain" fuzz build

# New inputs go to a scratch directory, so CI never grows the committed corpus.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo "+$toolchain" fuzz list); do
    echo "== fuzz: $target for $seconds s"
    mkdir -p "$scratch/$target" "fuzz/corpus/$target"
    timeout $((seconds + 300)) cargo "+$toolchain" fuzz run "$target" \
        "$scratch/$target" "fuzz/corpus/$target" -- -max_total_time="$seconds"
done
echo "== fuzz: every target ran $seconds s without a finding"
