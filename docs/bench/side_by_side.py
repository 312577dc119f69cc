#!/usr/bin/env python3
"""Runs chittychat-bench and the fan-out reference servers (raw TCP, NATS, minimal
tonic) in one sitting, interleaved, and prints the medians side by side.

  python3 docs/bench/side_by_side.py run --reps 3 --out docs/bench/runs.jsonl
  python3 docs/bench/side_by_side.py report docs/bench/runs.jsonl

The reference servers and their load generator are in docs/bench/fanout (see its
README.md); build them there first with `cargo build --release`, or point
--reference-dir at another built copy. Debian's nats-server must be on PATH.
chittychat-bench must be built with `cargo build --release` in the project root.
Every server started here is stopped by its PID.
"""
import argparse, json, os, random, resource, socket, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "target", "release", "chittychat-bench")
# Offered messages/s for the latency runs: 100k deliveries/s at every N, as the
# reference servers' own measurements used.
RATE = {10: 10_000, 100: 1_000, 1000: 100, 10000: 10}
REFERENCES = {"A-tcp": ("tcp", "tcp"), "B-nats": ("nats", "nats"), "C-tonic": ("grpc-naive", "grpc")}
# Chitty-Chat's variants: chittychat-bench's extra flags for each.
CHITTYCHAT = {"chittychat": [], "chittychat-stream": ["--publish-over", "stream"]}


def pick_port():
    while True:
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                pass


def reference_run(reference_dir, variant, n, mode, warmup, secs, extra):
    kind, client = REFERENCES[variant]
    port = pick_port()
    if kind == "nats":
        cmd = ["nats-server", "-a", "127.0.0.1", "-p", str(port)]
    else:
        cmd = [os.path.join(reference_dir, "target/release/fanout-server"), "--variant", kind, "--port", str(port)]
    srv = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"{variant} did not start")
                time.sleep(0.05)
        addr = f"nats://127.0.0.1:{port}" if kind == "nats" else f"127.0.0.1:{port}"
        load = [os.path.join(reference_dir, "target/release/fanout-load"), "--variant", client, "--addr", addr,
                "--n", str(n), "--mode", mode, "--server-pid", str(srv.pid), "--warmup", str(warmup),
                "--secs", str(secs), *extra]
        if mode == "rate":
            load += ["--rate", str(RATE[n])]
        r = subprocess.run(load, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(r.stderr.strip()[-300:])
        res = json.loads(r.stdout.strip().splitlines()[-1])
        return {"deliveries_per_s": res.get("deliveries_per_s"), "msgs_per_s": res.get("msgs_per_s"),
                "cpu_ns_per_delivery": res.get("server_cpu_ns_per_delivery"),
                "server_cpu_pct": res.get("server_cpu_pct"),
                "p50_us": res.get("p50_us"), "p99_us": res.get("p99_us"), "p999_us": res.get("p999_us"),
                "rss_kib": res.get("server_rss_kib"), "lost": res.get("lost", 0)}
    finally:
        srv.terminate()
        try:
            srv.wait(5)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


def chitty_run(n, mode, warmup, secs, extra):
    cmd = [BENCH, mode, "--participants", str(n), "--warmup", str(warmup), "--duration", str(secs), "--json", *extra]
    if mode == "rate":
        cmd += ["--rate", str(RATE[n])]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    res = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else None
    if res is None:
        raise RuntimeError(r.stderr.strip()[-300:])
    lat, srv = res.get("latency") or {}, res.get("server") or {}
    return {"deliveries_per_s": res["deliveries_per_s"], "msgs_per_s": res["publishes_per_s"],
            "cpu_ns_per_delivery": srv.get("cpu_ns_per_delivery"), "cpu_ns_per_publish": srv.get("cpu_ns_per_publish"),
            "server_cpu_pct": srv.get("cpu_percent"),
            "p50_us": lat.get("p50_us"), "p99_us": lat.get("p99_us"), "p999_us": lat.get("p999_us"),
            "rss_kib": srv.get("rss_kib"), "kib_per_participant": srv.get("kib_per_participant"),
            "lost": res["lost"] + res["duplicated"] + res.get("reordered", 0) + res["failures"], "joins": res["joins"]}


def run(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    variants = args.variants.split(",")
    for rep in range(args.reps):
        for n in [int(x) for x in args.ns.split(",")]:
            for mode in args.modes.split(","):
                order = variants[rep % len(variants):] + variants[:rep % len(variants)]
                for v in order:
                    try:
                        if v in CHITTYCHAT:
                            res = chitty_run(n, mode, args.warmup, args.secs,
                                             args.bench_args.split() + CHITTYCHAT[v])
                        else:
                            res = reference_run(args.reference_dir, v, n, mode, args.warmup, args.secs, args.load_args.split())
                    except Exception as e:  # noqa: BLE001 - keep the matrix going, record the failure
                        print(f"FAILED {v} n={n} {mode}: {e}", file=sys.stderr, flush=True)
                        continue
                    res.update(variant=v, n=n, mode=mode, rep=rep, time=time.strftime("%H:%M:%S"))
                    with open(args.out, "a") as f:
                        f.write(json.dumps(res) + "\n")
                    print(json.dumps({k: res[k] for k in ("variant", "n", "mode", "deliveries_per_s",
                                                          "cpu_ns_per_delivery", "p99_us", "rss_kib", "lost")}),
                          flush=True)


def report(path):
    rows = [json.loads(l) for l in open(path)]
    med = lambda rs, k: statistics.median([r[k] for r in rs if r.get(k) is not None] or [float("nan")])
    keys = sorted({(r["mode"], r["n"]) for r in rows})
    names = [v for v in ["A-tcp", "B-nats", "C-tonic", *CHITTYCHAT] if any(r["variant"] == v for r in rows)]
    print("| mode | N | " + " | ".join(names) + " | metric |")
    print("|---|---|" + "---|" * len(names) + "---|")
    for mode, n in keys:
        metrics = {"saturate": ["cpu_ns_per_delivery", "deliveries_per_s"], "rate": ["p50_us", "p99_us", "p999_us"],
                   "idle": ["rss_kib"]}.get(mode, [])
        for m in metrics:
            cells = []
            for v in names:
                rs = [r for r in rows if r["mode"] == mode and r["n"] == n and r["variant"] == v]
                cells.append(f"{med(rs, m):,.0f} ({len(rs)})" if rs else "-")
            print(f"| {mode} | {n} | " + " | ".join(cells) + f" | {m} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["run", "report"])
    ap.add_argument("path", nargs="?")
    ap.add_argument("--reference-dir", dest="reference_dir",
                    default=os.path.join(ROOT, "docs", "bench", "fanout"),
                    help="a built copy of docs/bench/fanout (cargo build --release there)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ns", default="100,1000")
    ap.add_argument("--modes", default="saturate")
    # chittychat-stream: chittychat-bench --publish-over stream (one PublishStream per
    # publisher instead of a Publish call per message).
    ap.add_argument("--variants", default="A-tcp,B-nats,C-tonic,chittychat")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--secs", type=float, default=5.0)
    ap.add_argument("--bench-args", default="")
    # fanout-load's own flags for the reference servers, e.g. "--inflight 256" so that
    # the minimal tonic server's publisher keeps as many calls in flight as
    # chittychat-bench's does.
    ap.add_argument("--load-args", default="")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "runs.jsonl"))
    args = ap.parse_args()
    report(args.path or args.out) if args.cmd == "report" else run(args)


if __name__ == "__main__":
    main()
