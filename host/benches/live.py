#!/usr/bin/env python3
"""Measures pier's live operations (issue 5) and prints the BENCHMARKS.md table as Markdown.

    cargo build --release && python3 host/benches/live.py [--duration 5]

- swap time: a plugin reload whose compiled artifact is already cached, from pier's own log
  line (load from the cache + publish), and the worker's switch at its next frame boundary
  (snapshot, new instance, restore);
- a neighbour tenant's latency while another tenant's plugin loops: `pier bench` on an echo
  listener, quiet and then while a client keeps sending `loop` to the faulty test plugin on a
  second listener of the same process, for the default 1 s call deadline and for 10 ms;
- the latency bump during reloads under load: `pier bench` on one listener, quiet and then
  while its plugin file is swapped between two echo-compatible plugins and SIGHUP is sent every
  200 ms.
Every comparison runs both sides in the same invocation on the same machine.
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIER = os.path.join(ROOT, "target", "release", "pier")


def guest(name):
    found = sorted(glob.glob(os.path.join(ROOT, "target", "release", "build", "pier-*", "out",
                                          "guests", name)), key=os.path.getmtime)
    if not found:
        sys.exit(f"{name} not found: run `cargo build --release` first")
    return found[-1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pier:
    """`pier serve --config` with its stderr collected."""

    def __init__(self, config_text, folder):
        self.path = os.path.join(folder, "pier.toml")
        with open(self.path, "w") as f:
            f.write(config_text)
        env = dict(os.environ, PIER_CACHE_DIR=os.path.join(folder, "cache"))
        self.proc = subprocess.Popen([PIER, "serve", "--config", self.path], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.addrs = {}
        ready = threading.Event()
        self.count = config_text.count("[[listener]]")

        def read():
            for line in self.proc.stderr:
                self.lines.append(line.rstrip())
                m = re.match(r"pier: listening on (\S+) .*; listener (\S+)\)", line)
                if m:
                    self.addrs[m.group(2)] = m.group(1)
                    if len(self.addrs) == self.count:
                        ready.set()
        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60):
            self.stop()
            sys.exit("pier did not start:\n" + "\n".join(self.lines))

    def hup(self):
        self.proc.send_signal(signal.SIGHUP)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def bench(addr, duration, connections=10):
    out = subprocess.run([PIER, "bench", addr, "--framing", "lines", "--connections",
                          str(connections), "--duration", f"{duration}s", "--in-flight", "1",
                          "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["results"][0]


def listener(name, port, plugin, deadline="1s"):
    return f"""
[[listener]]
name = "{name}"
address = "127.0.0.1:{port}"
plugin = "{plugin}"
framing = "lines"
[listener.limits]
memory = "16MiB"
call_deadline = "{deadline}"
"""


def install(src, folder):
    tmp = os.path.join(folder, "plugin.wasm.partial")
    shutil.copy(src, tmp)
    os.rename(tmp, os.path.join(folder, "plugin.wasm"))


def swap_times(folder, rounds=20):
    """Reloads between two cached versions; returns (publish+load µs list, worker switch µs)."""
    install(guest("pier_stateful.wasm"), folder)
    pier = Pier("[server]\nwatch = false\n" + listener("live", free_port(), "plugin.wasm"), folder)
    host, port = pier.addrs["live"].rsplit(":", 1)
    conn = socket.create_connection((host, int(port)))
    f = conn.makefile("rw")
    versions = [guest("pier_stateful_v2.wasm"), guest("pier_stateful.wasm")]
    for i in range(rounds + 2):  # the first two compile and fill the cache
        install(versions[i % 2], folder)
        before = len(pier.lines)
        pier.hup()
        deadline = time.time() + 10
        while not any("reload done" in l for l in pier.lines[before:]):
            if time.time() > deadline:
                sys.exit("reload not reported:\n" + "\n".join(pier.lines[before:]))
            time.sleep(0.005)
        f.write("frame\n")
        f.flush()
        f.readline()
    time.sleep(0.2)
    conn.close()
    pier.stop()
    loads = [parse_us(m.group(1)) for l in pier.lines
             for m in [re.search(r"compiled_in=(\S+) cached=true", l)] if m]
    publishes = [parse_us(m.group(1)) for l in pier.lines
                 for m in [re.search(r"published in (\S+)\)", l)] if m]
    switches = [parse_us(m.group(1)) for l in pier.lines
                for m in [re.search(r"switched_in=(\S+)", l)] if m]
    return loads, publishes[2:], switches[2:]


def parse_us(text):
    m = re.match(r"([\d.]+)(ns|µs|us|ms|s)", text)
    scale = {"ns": 1e-3, "µs": 1, "us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
    return float(m.group(1)) * scale


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def neighbour(folder, duration, deadline):
    shutil.copy(guest("pier_faulty.wasm"), os.path.join(folder, "faulty.wasm"))
    calm_port, spin_port = free_port(), free_port()
    config = (listener("calm", calm_port, "echo") +
              listener("spin", spin_port, "faulty.wasm", deadline))
    pier = Pier(config, folder)
    quiet = bench(pier.addrs["calm"], duration)
    stop = threading.Event()
    loops = [0]

    def spin():
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", spin_port)) as s:
                    s.sendall(b"loop\n")
                    s.recv(100)  # the fault closes the connection
                    loops[0] += 1
            except OSError:
                time.sleep(0.01)
    t = threading.Thread(target=spin, daemon=True)
    t.start()
    loaded = bench(pier.addrs["calm"], duration)
    stop.set()
    t.join()
    pier.stop()
    return quiet, loaded, loops[0]


def reload_bump(folder, duration):
    install(guest("pier_echo.wasm"), folder)
    pier = Pier("[server]\nwatch = false\n" + listener("live", free_port(), "plugin.wasm"), folder)
    quiet = bench(pier.addrs["live"], duration)
    stop = threading.Event()
    reloads = [0]

    def churn():
        versions = [guest("pier_faulty.wasm"), guest("pier_echo.wasm")]
        while not stop.is_set():
            install(versions[reloads[0] % 2], folder)
            pier.hup()
            reloads[0] += 1
            time.sleep(0.2)
    t = threading.Thread(target=churn, daemon=True)
    t.start()
    loaded = bench(pier.addrs["live"], duration)
    stop.set()
    t.join()
    pier.stop()
    swapped = sum(1 for l in pier.lines if "plugin reloaded" in l)
    return quiet, loaded, reloads[0], swapped


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        loads, publishes, switches = swap_times(folder)
        print("| swap step (cached artifact) | median | max |\n|---|---|---|")
        print(f"| load from cache + check | {median(loads):.0f} µs | {max(loads):.0f} µs |")
        print(f"| publish to the slot | {median(publishes):.1f} µs | {max(publishes):.1f} µs |")
        if switches:
            print(f"| worker switch (snapshot, instantiate, restore) | {median(switches):.0f} µs "
                  f"| {max(switches):.0f} µs |")
        print()
        print("| looping tenant's call deadline | neighbour quiet p50 / p99 / p99.9 / max µs | "
              "neighbour while looping p50 / p99 / p99.9 / max µs | p99 bump | rt/s quiet → "
              "looping | loops run |\n|---|---|---|---|---|---|")
        for deadline in ["1s", "100ms", "10ms"]:
            quiet, loaded, loops = neighbour(folder, args.duration, deadline)
            q = lambda r: (f"{r['p50_us']:.0f} / {r['p99_us']:.0f} / {r['p999_us']:.0f} / "
                           f"{r['max_us']:.0f}")
            print(f"| {deadline} | {q(quiet)} | {q(loaded)} | "
                  f"{(loaded['p99_us'] - quiet['p99_us']) / 1000:.1f} ms | "
                  f"{quiet['round_trips_per_s']:.0f} → {loaded['round_trips_per_s']:.0f} | {loops} |")
        print()
        quiet, loaded, reloads, swapped = reload_bump(folder, args.duration)
        print("| reloads under load (10 conns, 1 in flight) | p50 / p99 / max µs | round trips/s "
              "| errors | mismatches |\n|---|---|---|---|---|")
        print(f"| quiet | {quiet['p50_us']:.0f} / {quiet['p99_us']:.0f} / {quiet['max_us']:.0f} | "
              f"{quiet['round_trips_per_s']:.0f} | {quiet['errors']} | {quiet['mismatches']} |")
        print(f"| {swapped} swaps (SIGHUP every 200 ms) | {loaded['p50_us']:.0f} / "
              f"{loaded['p99_us']:.0f} / {loaded['max_us']:.0f} | "
              f"{loaded['round_trips_per_s']:.0f} | {loaded['errors']} | {loaded['mismatches']} |")
        print(f"\np99 bump during reloads: {(loaded['p99_us'] - quiet['p99_us']) / 1000:.2f} ms")


if __name__ == "__main__":
    main()
