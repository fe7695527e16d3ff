#!/usr/bin/env python3
"""Measures the proxy plugin (issue 6) and prints the BENCHMARKS.md table as Markdown.

    cargo build --release && python3 host/benches/proxy.py [--duration 5] [--rounds 3]

The upstream is `pier baseline --framing lines` (native tokio, replies `Echo: ` + frame). The
same `pier bench` load goes, in alternating rounds within one run:
- straight to the upstream (what a client would get without pier),
- through `pier serve` with the built-in `proxy` plugin and a pooled upstream,
- to pier's own echo plugin (pier without an upstream hop), for reference.
Loads: 1 connection (added latency) and 50 connections (throughput), one frame in flight each,
16 B frames. Server CPU per round trip is read from /proc for the server the load hits (for the
proxy: pier alone; the upstream's CPU is the direct row's).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIER = os.path.join(ROOT, "target", "release", "pier")


class Process:
    """A child whose stderr is read for `listening on ADDR` lines."""

    def __init__(self, args, pattern, count=1, env=None):
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.addrs = []
        self.lines = []
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line.rstrip())
                m = re.search(pattern, line)
                if m:
                    self.addrs.append(m.group(1))
                    if len(self.addrs) == count:
                        ready.set()
        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60):
            self.stop()
            sys.exit("did not start:\n" + "\n".join(self.lines))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def bench(addr, pid, connections, duration):
    out = subprocess.run([PIER, "bench", addr, "--framing", "lines", "--connections",
                          str(connections), "--duration", f"{duration}s", "--in-flight", "1",
                          "--size", "16", "--server-pid", str(pid), "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["results"][0]


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="pier-proxy-bench-")
    env = dict(os.environ, PIER_CACHE_DIR=os.path.join(folder, "cache"))
    upstream = Process([PIER, "baseline", "--listen", "127.0.0.1:0", "--framing", "lines"],
                       r"listening on (\S+)")
    config = os.path.join(folder, "pier.toml")
    with open(config, "w") as f:
        f.write(f"""
[server]
watch = false

[[upstream]]
name = "backend"
addresses = ["{upstream.addrs[0]}"]
framing = "lines"
max_size = 64

[[listener]]
name = "proxy"
address = "127.0.0.1:0"
plugin = "proxy"
framing = "lines"
upstreams = ["backend"]

[[listener]]
name = "echo"
address = "127.0.0.1:0"
plugin = "echo"
framing = "lines"
""")
    pier = Process([PIER, "serve", "--config", config], r"listening on (\S+) .*; listener",
                   count=2, env=env)
    proxy_addr, echo_addr = pier.addrs  # in config order
    targets = [
        ("upstream directly (native tokio)", upstream.addrs[0], upstream.proc.pid),
        ("pier proxy → upstream", proxy_addr, pier.proc.pid),
        ("pier echo plugin (no upstream)", echo_addr, pier.proc.pid),
    ]
    results = {}
    try:
        for connections in (1, 50):
            bench(proxy_addr, pier.proc.pid, connections, 1)  # warm the pool and instances
            for _ in range(args.rounds):
                for name, addr, pid in targets:
                    r = bench(addr, pid, connections, args.duration)
                    if r["mismatches"] or r["errors"]:
                        sys.exit(f"{name}: {r['mismatches']} mismatches, {r['errors']} errors")
                    results.setdefault((connections, name), []).append(r)
    finally:
        pier.stop()
        upstream.stop()

    print(f"`python3 host/benches/proxy.py --duration {args.duration:g} --rounds {args.rounds}`"
          f" — median of {args.rounds} alternating rounds, 16 B frames, 1 in flight per "
          "connection\n")
    print("| connections | target | round trips/s | p50 µs | p99 µs | server CPU µs/rt |")
    print("|---|---|---|---|---|---|")
    for connections in (1, 50):
        for name, _, _ in targets:
            rows = results[(connections, name)]
            rate = median([r["round_trips_per_s"] for r in rows])
            p50 = median([r["p50_us"] for r in rows])
            p99 = median([r["p99_us"] for r in rows])
            cpus = [r["cpu_us_per_round_trip"] for r in rows if r["cpu_us_per_round_trip"]]
            cpu = f"{median(cpus):.1f}" if cpus else "–"
            print(f"| {connections} | {name} | {rate:,.0f} | {p50:.0f} | {p99:.0f} | {cpu} |")


if __name__ == "__main__":
    main()
