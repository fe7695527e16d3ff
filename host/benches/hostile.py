#!/usr/bin/env python3
"""The hostile-tenant benchmark (issue 16): what a tenant written to hurt costs its neighbour.

    cargo build --release && python3 host/benches/hostile.py [--duration 4] [--pier PATH]

One pier process per case, two listeners on two workers: `hostile` (the guests/test/hostile test
plugin, default limits) and `calm` (the built-in echo, lines). For each case a set of Python
threads attacks the hostile listener while `pier bench` measures the calm one (50 connections,
one frame in flight, 16 B); the table gives the neighbour's round trips/s and p99 next to the
undisturbed figures of the same run, and the peak resident memory of the pier process (VmHWM).
`--pier` runs an older binary with the same plugin, for the before/after comparison in
BENCHMARKS.md (the config uses only keys every version knows, so each runs on its defaults).
"""
import argparse
import glob
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def guest(name):
    found = sorted(glob.glob(os.path.join(ROOT, "target", "release", "build", "pier-*", "out",
                                          "guests", name)), key=os.path.getmtime)
    if not found:
        sys.exit(f"{name} not found: run `cargo build --release` first")
    return found[-1]


CONFIG = """
[server]
workers = 2

[[listener]]
name = "hostile"
address = "127.0.0.1:0"
plugin = "{plugin}"
framing = "lines"

[[listener]]
name = "calm"
address = "127.0.0.1:0"
plugin = "echo"
framing = "lines"
"""


class Pier:
    def __init__(self, binary, folder):
        path = os.path.join(folder, "pier.toml")
        with open(path, "w") as f:
            f.write(CONFIG.format(plugin=guest("pier_hostile.wasm")))
        env = dict(os.environ, PIER_CACHE_DIR=os.path.join(folder, "cache"))
        self.proc = subprocess.Popen([binary, "--log-level", "warn,pier=info", "serve",
                                      "--config", path], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.addrs = {}
        self.log_bytes = 0
        deadline = time.time() + 60
        while len(self.addrs) < 2 and time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            m = re.match(r"pier: listening on (\S+) .*; listener (\S+)\)", line)
            if m:
                self.addrs[m.group(2)] = m.group(1)
        if len(self.addrs) < 2:
            sys.exit(f"pier did not start: {self.addrs}")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log_bytes += len(line)

    def status(self, field):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def rss_after_attack(self):
        """Resident memory once the attackers have gone: the lowest of a few readings over
        three seconds (connections close asynchronously)."""
        lowest = self.status("VmRSS")
        for _ in range(30):
            time.sleep(0.1)
            lowest = min(lowest, self.status("VmRSS"))
        return lowest

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def connect(addr):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def ask(s, line):
    s.sendall(line.encode() + b"\n")
    got = b""
    while not got.endswith(b"\n"):
        chunk = s.recv(1 << 20)
        if not chunk:
            return None
        got += chunk
    return got


class Attack:
    """Runs `body(stop)` in threads until stopped; errors (closed connections) end a thread's
    turn and it starts again, as a determined attacker would."""

    def __init__(self, threads, body):
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(body,), daemon=True)
                        for _ in range(threads)]

    def _run(self, body):
        while not self.stop.is_set():
            try:
                body(self.stop)
            except OSError:
                time.sleep(0.01)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()


def repeat(addr, line, read_reply=True):
    def body(stop):
        s = connect(addr)
        try:
            while not stop.is_set():
                if read_reply:
                    if ask(s, line) is None:
                        return
                else:
                    s.sendall(line.encode() + b"\n")
                    time.sleep(0.05)
        finally:
            s.close()
    return body


def hold(addr, setup, count, silent=False):
    """Opens `count` connections that each send `setup` once and then stay (never reading when
    `silent`)."""
    def body(stop):
        held = []
        try:
            for _ in range(count):
                if stop.is_set():
                    break
                s = connect(addr)
                if setup is not None:
                    if silent:
                        s.sendall(setup)
                    else:
                        ask(s, setup)
                held.append(s)
            stop.wait()
        finally:
            for s in held:
                s.close()
    return body


def flood(addr):
    def body(stop):
        victim = connect(addr)
        victim.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ask(victim, "ok")
        attacker = connect(addr)
        try:
            while not stop.is_set():
                if ask(attacker, "broadcast 1100 1024") is None:
                    return
        finally:
            attacker.close()
            victim.close()
    return body


CASES = [
    ("undisturbed", None),
    ("1 guest sleeps in a host call (8 clients)", lambda a: Attack(8, repeat(a, "sleep 3600"))),
    ("2 broadcast flood, one reader never reads", lambda a: Attack(1, flood(a))),
    ("3 64 attributes × 64 KiB on 500 connections",
     lambda a: Attack(1, hold(a, "attrs 64 64", 500))),
    ("4 64 timers × 1 ms on 300 connections", lambda a: Attack(1, hold(a, "timers 64 1", 300))),
    ("6 60 MB replies", lambda a: Attack(1, repeat(a, "reply 61440"))),
    ("7 looping guest (4 clients)", lambda a: Attack(4, repeat(a, "loop"))),
    ("8 log flood", lambda a: Attack(2, repeat(a, "log 100000"))),
    ("9 peers() with 2,000 connections (4 callers)",
     lambda a: Attack(1, hold(a, "ok", 2000)), lambda a: Attack(4, repeat(a, "peers 100"))),
    ("11 1,000 clients each holding a 1 MB partial line",
     lambda a: Attack(1, hold(a, b"x" * (1 << 20), 1000, silent=True))),
]


def bench(binary, addr, duration):
    out = subprocess.run([binary, "--log-level", "error", "bench", addr, "--framing", "lines",
                          "--connections", "50", "--duration", f"{duration}s", "--warmup", "1s",
                          "--json"], capture_output=True, text=True, timeout=duration + 120)
    try:
        return json.loads(out.stdout)["results"][0]
    except (ValueError, KeyError, IndexError):
        return {"round_trips_per_s": 0.0, "p99_us": float("inf"), "error": out.stderr[-300:]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pier", default=os.path.join(ROOT, "target", "release", "pier"))
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--only", help="run only cases whose name contains this")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for case in CASES:
            name, attacks = case[0], case[1:]
            if args.only and args.only not in name and name != "undisturbed":
                continue
            pier = Pier(args.pier, folder)
            try:
                running = [make(pier.addrs["hostile"]).__enter__()
                           for make in attacks if make is not None]
                time.sleep(2.0 if running else 0.0)  # let the attack build up
                result = bench(args.pier, pier.addrs["calm"], args.duration)
                for attack in running:
                    attack.__exit__()
                peak = pier.status("VmHWM")
                rows.append({"case": name, "rt_per_s": result.get("round_trips_per_s", 0.0),
                             "p99_us": result.get("p99_us"), "errors": result.get("errors"),
                             "peak_rss_mb": peak / 1e6,
                             "rss_after_mb": pier.rss_after_attack() / 1e6,
                             "log_mb": pier.log_bytes / 1e6})
            finally:
                pier.stop()
            print(json.dumps(rows[-1]), file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    base = rows[0]
    print(f"binary: {args.pier}\n")
    print("| case | neighbour rt/s | vs undisturbed | p99 µs | vs undisturbed | peak RSS MB "
          "| RSS after MB | log MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate = r["rt_per_s"] / base["rt_per_s"] if base["rt_per_s"] else 0
        p99 = r["p99_us"] / base["p99_us"] if base["p99_us"] else 0
        print(f"| {r['case']} | {r['rt_per_s']:,.0f} | {rate:.2f}× | {r['p99_us']:,.0f} | "
              f"{p99:.1f}× | {r['peak_rss_mb']:,.0f} | {r['rss_after_mb']:,.0f} | "
              f"{r['log_mb']:,.1f} |")


if __name__ == "__main__":
    main()
