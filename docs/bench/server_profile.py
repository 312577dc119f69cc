#!/usr/bin/env python3
"""Where chittychat-server's CPU goes, from a `perf record` of the server process.

Groups the samples of `perf report --sort comm,dso,symbol` into coarse buckets,
with the event log's writer thread (`chittychat-log-writer`) apart from the
threads that serve connections, and prints each bucket's share of all samples.

    perf record -F 1999 -p "$(pgrep -n chittychat-serv)" -o server.data -- sleep 4
    python3 docs/bench/server_profile.py server.data [more.data ...]

With several files, one column each. `FILE@START,STOP` takes only the samples in
that time window (perf report's --time, e.g. `run.data@70%-90%`). perf shortens
thread names to 15 characters:
the writer is `chittychat-log-`, the runtime's workers `tokio-runtime-w`.
"""
import re
import subprocess
import sys

WRITER = "chittychat-log-"

# (bucket, test on (thread, dso, symbol, is_kernel)); the first that matches wins.
BUCKETS = [
    ("log writer: kernel (write, fdatasync)", lambda t, d, s, k: t == WRITER and k),
    ("log writer: redb", lambda t, d, s, k: t == WRITER and "redb" in s),
    ("log writer: the rest (records, waking feeds)", lambda t, d, s, k: t == WRITER),
    ("kernel: TCP/IP, syscalls, scheduler", lambda t, d, s, k: k),
    ("jemalloc", lambda t, d, s, k: "_rjem_" in s or "jemalloc" in s),
    ("memcpy/memmove", lambda t, d, s, k: "memmove" in s or "memcpy" in s),
    ("prost encode/decode", lambda t, d, s, k: "prost" in s),
    ("h2", lambda t, d, s, k: "h2::" in s),
    ("tonic", lambda t, d, s, k: "tonic" in s),
    ("hyper / http / tower", lambda t, d, s, k: re.search(r"hyper|http_body|http::|tower", s)),
    ("tokio runtime (scheduling, wake-ups, timers)", lambda t, d, s, k: "tokio" in s),
    ("chittychat (room, log, feeds, connection watch)", lambda t, d, s, k: "chittychat" in s),
    ("bytes", lambda t, d, s, k: "bytes::" in s),
    ("tracing (logging)", lambda t, d, s, k: "tracing" in s),
]
OTHER = "other user code"


def buckets(path):
    path, _, window = path.partition("@")
    report = subprocess.run(
        ["perf", "report", "-i", path, "--no-children", "--sort", "comm,dso,symbol",
         "--stdio", "-g", "none", "--field-separator", "\t"]
        + (["--time", window] if window else []),
        capture_output=True, text=True, check=True,
    ).stdout
    shares = {}
    for line in report.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 4:
            continue
        share, thread, dso, symbol = fields[0], fields[1], fields[2], fields[3]
        match = re.match(r"\s*([\d.]+)%", share)
        if not match:
            continue
        kernel = symbol.startswith("[k]")
        symbol = re.sub(r"^\[.\]\s*", "", symbol)
        name = next((b for b, test in BUCKETS if test(thread.strip(), dso, symbol, kernel)), OTHER)
        shares[name] = shares.get(name, 0.0) + float(match.group(1))
    return shares


def main():
    paths = sys.argv[1:]
    if not paths:
        sys.exit(__doc__)
    columns = [buckets(path) for path in paths]
    names = [b for b, _ in BUCKETS] + [OTHER]
    print("| share of server CPU | " + " | ".join(paths) + " |")
    print("|---" * (len(paths) + 1) + "|")
    for name in names:
        if all(column.get(name, 0.0) < 0.05 for column in columns):
            continue
        cells = " | ".join(f"{column.get(name, 0.0):.1f}%" for column in columns)
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
