#!/usr/bin/env python3
"""How long the old process lives after `pier upgrade` on a chat load, and what it costs.

    cargo build --release && python3 host/benches/upgrade.py [--clients 200] [--mean 20]

The built-in chat room with CLIENTS line clients, each sending a line a second. At the upgrade
every client has a remaining session drawn from an exponential distribution with mean MEAN
seconds (chat sessions are long and memoryless: the time already spent says nothing about the
time left), then quits with `/quit`. Measured for the default `drain_timeout` (10 s) and for one
longer than every session: from `pier upgrade` returning to the old process's exit, how many
clients were still on the old process when it ended (dropped by the drain timeout), the old
process's resident memory at the switch and at its end, and the upgrade's own time (signal to
`ready`). Open connections cannot move between processes, so the old process's life is the
longest remaining session, capped by the drain timeout. Prints the BENCHMARKS.md table.
"""
import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIER = os.path.join(ROOT, "target", "release", "pier")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Chatter(threading.Thread):
    """One chat client: joins, talks once a second, leaves when told its session is over."""

    def __init__(self, port, name):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rwb")
        self.file.readline()  # the name prompt
        self.file.write(f"{name}\n".encode())
        self.file.flush()
        self.leave_at = None
        self.dropped = False
        self.done = threading.Event()
        threading.Thread(target=self.drain, daemon=True).start()

    def drain(self):
        try:
            while self.file.readline():
                pass
        except OSError:
            pass
        if self.leave_at is None or time.monotonic() < self.leave_at:
            self.dropped = True
        self.done.set()

    def run(self):
        try:
            while not self.done.is_set():
                if self.leave_at is not None and time.monotonic() >= self.leave_at:
                    self.file.write(b"/quit\n")
                    self.file.flush()
                    return
                self.file.write(b"hello room\n")
                self.file.flush()
                time.sleep(1)
        except OSError:
            self.dropped = True


def measure(clients, mean, drain, folder):
    binary = os.path.join(folder, f"pier-{drain}")
    shutil.copy(PIER, binary)
    pid_file = os.path.join(folder, f"pier-{drain}.pid")
    port = free_port()
    env = dict(os.environ, PIER_CACHE_DIR=os.path.join(folder, "cache"))
    old = subprocess.Popen([binary, "serve", "chat", "--listen", f"127.0.0.1:{port}",
                            "--pid-file", pid_file, "--drain-timeout", drain],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not os.path.exists(pid_file):
        if time.monotonic() > deadline or old.poll() is not None:
            sys.exit("pier did not start")
        time.sleep(0.05)
    chatters = [Chatter(port, f"user{i}") for i in range(clients)]
    for c in chatters:
        c.start()
    time.sleep(2)
    rss_before = rss_kib(old.pid)
    started = time.monotonic()
    subprocess.run([PIER, "upgrade", "--pid-file", pid_file], check=True,
                   stderr=subprocess.DEVNULL)
    switched = time.monotonic()
    rng = random.Random(7)
    for c in chatters:
        c.leave_at = switched + rng.expovariate(1 / mean)
    rss_end = rss_before
    while old.poll() is None:
        rss_end = rss_kib(old.pid) or rss_end
        time.sleep(0.05)
    lived = time.monotonic() - switched
    for c in chatters:
        c.done.wait(5)
    with open(pid_file) as f:
        new_pid = int(f.read())
    os.kill(new_pid, 15)
    longest = max(c.leave_at for c in chatters) - switched
    dropped = sum(c.dropped for c in chatters)
    return {
        "drain": drain, "upgrade_ms": (switched - started) * 1000, "lived": lived,
        "longest": longest, "dropped": dropped, "rss_before": rss_before, "rss_end": rss_end,
        "exit": old.returncode,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--mean", type=float, default=20.0, help="mean remaining session, s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(args.clients, args.mean, drain, folder) for drain in ("10s", "10m")]
    print(f"{args.clients} chat clients, a line a second each, remaining sessions exponential "
          f"with mean {args.mean:g} s\n")
    print("| drain_timeout | upgrade (signal to ready) | old process lived after | longest "
          "session | clients dropped | old RSS at switch / end | exit |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['drain']} | {r['upgrade_ms']:.0f} ms | {r['lived']:.1f} s | "
              f"{r['longest']:.1f} s | {r['dropped']} of {args.clients} | "
              f"{r['rss_before'] / 1024:.1f} / {r['rss_end'] / 1024:.1f} MiB | {r['exit']} |")


if __name__ == "__main__":
    main()
