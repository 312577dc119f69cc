#!/usr/bin/env bash
# One sitting of chittychat-bench against a cluster: a NATS server with JetStream,
# NODES chittychat-server nodes on it, the participants spread over the nodes.
# Prints the bench's JSON report with the nodes' CPU time (summed over nodes, and
# NATS's apart) per delivery added. Usage, from the repository root after
# `cargo build --release`:
#
#   docs/bench/cluster.sh NODES MODE [bench flags…]
#   docs/bench/cluster.sh 3 saturate --participants 100 --publishers 10 --duration 10
#
# Needs nats-server (Debian's package). Everything runs on loopback and is
# stopped at the end.
set -euo pipefail
nodes=$1
shift
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
cpu_ticks() {
    # utime + stime of each pid, summed, in clock ticks.
    local total=0
    for pid in "$@"; do
        read -r -a stat <"/proc/$pid/stat"
        total=$((total + stat[13] + stat[14]))
    done
    echo "$total"
}

nats_port=$(free_port)
nats-server -js -sd "$work/nats" -a 127.0.0.1 -p "$nats_port" >"$work/nats.log" 2>&1 &
nats_pid=$!
pids+=("$nats_pid")
for _ in $(seq 50); do
    grep -q "Server is ready" "$work/nats.log" && break
    sleep 0.1
done

urls=()
node_pids=()
for n in $(seq "$nodes"); do
    port=$(free_port)
    "$bin/chittychat-server" --listen "127.0.0.1:$port" --nats "nats://127.0.0.1:$nats_port" \
        --node "n$n" --publish-rate 0 --join-rate 0 --max-participants 20000 \
        --max-connections 20000 >"$work/n$n.log" 2>&1 &
    node_pids+=($!)
    pids+=($!)
    urls+=("http://127.0.0.1:$port")
    for _ in $(seq 100); do
        grep -q "Chitty-Chat server listening" "$work/n$n.log" && break
        sleep 0.1
    done
done
servers=$(IFS=,; echo "${urls[*]}")

nodes_before=$(cpu_ticks "${node_pids[@]}")
nats_before=$(cpu_ticks "$nats_pid")
report=$("$bin/chittychat-bench" "$@" --server "$servers" --json)
nodes_after=$(cpu_ticks "${node_pids[@]}")
nats_after=$(cpu_ticks "$nats_pid")
ticks=$(getconf CLK_TCK)
python3 - "$report" "$nodes" $((nodes_after - nodes_before)) $((nats_after - nats_before)) "$ticks" <<'EOF'
import json, sys
report = json.loads(sys.argv[1])
nodes, node_ticks, nats_ticks, hz = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
deliveries = report.get("deliveries") or 0
# The whole run (joins and warm-up included) over the deliveries counted: an
# upper bound on the CPU each delivery costs.
report["cluster"] = {
    "nodes": nodes,
    "nodes_cpu_s": node_ticks / hz,
    "nats_cpu_s": nats_ticks / hz,
    "nodes_cpu_ns_per_delivery_upper": node_ticks / hz * 1e9 / deliveries if deliveries else None,
    "nats_cpu_ns_per_delivery_upper": nats_ticks / hz * 1e9 / deliveries if deliveries else None,
}
print(json.dumps(report))
EOF
