#!/usr/bin/env python3
"""Reproduces the tables in BENCHMARKS.md from scratch and prints them as Markdown.

    python3 host/benches/run.py [--duration 5s] [--rounds 3] [--quick]

Every pier figure is measured next to its peer in the same run on the same machine:
- echo: `pier bench --compare` (pier's echo plugin vs `pier baseline`, the native tokio server
  with the same framing code), alternating rounds, for raw/lines/length-prefixed with 1 and
  32 frames in flight (raw only with 1: a raw frame is one read, so pipelined frames merge);
- idle connections: resident memory per connection, pier vs native (`pier bench --idle`);
- kn-sock's async server (the seed's Python server, from PyPI) under the same load as pier;
- HTTP: pier's http plugin vs nginx `return 200`, with wrk (Debian packages nginx-light, wrk),
  where installed.
- WebSocket: pier's echo behind `--framing websocket` vs a tokio-tungstenite echo server (the
  protocol crate pier's codec uses), 1 and 32 messages in flight;
- TLS: pier with a TLS listener vs the native baseline with tokio-rustls, same generated
  certificate: echo round trips over established connections, and handshakes per second
  (`--reconnect`: connect, handshake, one frame, close).
"""
import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIER = os.path.join(ROOT, "target", "release", "pier")


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def bench_json(args):
    return json.loads(sh([PIER, "bench", "--json", *args]))


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    rustc = sh(["rustc", "--version"]).strip()
    lock = open(os.path.join(ROOT, "Cargo.lock")).read()
    wasmtime = re.search(r'name = "wasmtime"\nversion = "([^"]+)"', lock).group(1)
    return (f"{os.cpu_count()} × {cpu}, Linux {platform.release()}, {rustc}, wasmtime {wasmtime}, "
            f"measured {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")


ECHO_CASES = [("raw", 1), ("lines", 1), ("lines", 32), ("length-prefixed", 1),
              ("length-prefixed", 32)]
# The native WebSocket peer is tokio-tungstenite (`pier baseline --framing websocket`).
WEBSOCKET_CASES = [("websocket", 1), ("websocket", 32)]


def echo_table(duration, rounds, connections, cases=ECHO_CASES):
    rows = ["| framing | in flight | native round trips/s | pier round trips/s | pier/native | "
            "native CPU µs/rt | pier CPU µs/rt | CPU ratio | pier p50 / p99 µs | mismatches |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for framing, in_flight in cases:
        out = bench_json(["--compare", "--framing", framing, "--in-flight", str(in_flight),
                          "--connections", str(connections), "--duration", duration,
                          "--rounds", str(rounds)])
        native, pier = out["results"]
        ratio = out["pier_vs_native"]
        rows.append(
            f"| {framing} | {in_flight} | {native['round_trips_per_s']:,.0f} | "
            f"{pier['round_trips_per_s']:,.0f} | **{ratio['round_trips']:.2f}×** | "
            f"{native['cpu_us_per_round_trip']:.2f} | {pier['cpu_us_per_round_trip']:.2f} | "
            f"**{ratio['cpu_per_round_trip']:.2f}×** | {pier['p50_us']:.0f} / {pier['p99_us']:.0f} | "
            f"{native['mismatches'] + pier['mismatches']} |")
    return "\n".join(rows)


def tls_table(duration, rounds, connections):
    rows = ["| what | native (tokio-rustls) per s | pier per s | pier/native | native CPU µs | "
            "pier CPU µs | CPU ratio |", "|---|---|---|---|---|---|---|"]
    cases = [("echo round trips, 1 in flight, lines", connections, ["--framing", "lines"]),
             ("echo round trips, 32 in flight, lines", connections,
              ["--framing", "lines", "--in-flight", "32"]),
             ("handshakes (connect + handshake + 1 frame + close), 10 clients", 10,
              ["--framing", "lines", "--reconnect"])]
    for label, clients, extra in cases:
        args = ["--compare", "--tls", "--connections", str(clients), "--duration", duration,
                "--rounds", str(rounds), *extra]
        out = bench_json(args)
        native, pier = out["results"]
        ratio = out["pier_vs_native"]
        rows.append(f"| {label} | {native['round_trips_per_s']:,.0f} | {pier['round_trips_per_s']:,.0f} | "
                    f"**{ratio['round_trips']:.2f}×** | {native['cpu_us_per_round_trip']:.2f} | "
                    f"{pier['cpu_us_per_round_trip']:.2f} | {ratio['cpu_per_round_trip']:.2f}× |")
    return "\n".join(rows)


def idle_table(count):
    out = bench_json(["--compare", "--idle", str(count)])
    rows = ["| server | idle connections | resident bytes per connection |", "|---|---|---|"]
    for r in out["idle"]:
        rows.append(f"| {r['server']} | {r['memory']['connections']:,} | "
                    f"**{r['memory']['bytes_per_connection']:,.0f}** |")
    return "\n".join(rows)


def knsock_table(duration, connections):
    venv = os.path.join(ROOT, "target", "bench-venv")
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        sh([sys.executable, "-m", "venv", venv])
        sh([python, "-m", "pip", "install", "-q", "--no-deps", "kn-sock==0.3.0"])
        sh([python, "-m", "pip", "install", "-q", "requests"])
    port = free_port()
    script = (
        "import asyncio, logging\n"
        "logging.disable(logging.CRITICAL)\n"
        "from kn_sock import start_async_tcp_server\n"
        "async def echo(data, addr, writer):\n"
        "    writer.write(b'Echo: ' + data)\n"
        "    await writer.drain()\n"
        f"asyncio.run(start_async_tcp_server({port}, echo, host='127.0.0.1'))\n")
    server = subprocess.Popen([python, "-c", script], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        ks = bench_json([f"127.0.0.1:{port}", "--connections", str(connections),
                         "--duration", duration, "--server-pid", str(server.pid)])["results"][0]
    finally:
        server.kill()
    pier_port = free_port()
    pier = subprocess.Popen([PIER, "--log-level", "warn", "serve", "echo", "--listen",
                             f"127.0.0.1:{pier_port}"], stderr=subprocess.DEVNULL)
    try:
        wait_port(pier_port)
        pr = bench_json([f"127.0.0.1:{pier_port}", "--connections", str(connections),
                         "--duration", duration, "--server-pid", str(pier.pid)])["results"][0]
    finally:
        pier.kill()
    rows = ["| server | round trips/s | p99 µs | CPU µs/rt |", "|---|---|---|---|"]
    for name, r in [("kn-sock 0.3.0 async server (Python)", ks), ("pier echo plugin", pr)]:
        cpu = r["cpu_us_per_round_trip"]
        rows.append(f"| {name} | {r['round_trips_per_s']:,.0f} | {r['p99_us']:.0f} | "
                    f"{cpu:.2f} |" if cpu else f"| {name} | {r['round_trips_per_s']:,.0f} | "
                    f"{r['p99_us']:.0f} | - |")
    rows.append(f"\npier/kn-sock: **{pr['round_trips_per_s'] / ks['round_trips_per_s']:.1f}×** "
                f"round trips/s (raw framing, {connections} connections, 1 in flight, 16 B).")
    return "\n".join(rows)


def wrk(url, duration):
    out = sh(["wrk", "-t2", "-c50", f"-d{duration}", url])
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return rps


def http_table(duration):
    if not (shutil.which("wrk") and shutil.which("nginx")):
        return "_wrk or nginx not installed (Debian packages wrk, nginx-light): not measured._"
    nginx_port = free_port()
    tmp = tempfile.mkdtemp(prefix="pier-nginx-")
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 2; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 4096; }}
http {{ access_log off;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen 127.0.0.1:{nginx_port}; location / {{ return 200 "ok"; }} }} }}
""")
    nginx = subprocess.Popen(["nginx", "-c", conf, "-p", tmp], stderr=subprocess.DEVNULL)
    try:
        wait_port(nginx_port)
        nginx_rps = wrk(f"http://127.0.0.1:{nginx_port}/", duration)
    finally:
        nginx.terminate()  # SIGTERM: the master stops its workers too
        nginx.wait(timeout=10)
    pier_port = free_port()
    pier = subprocess.Popen([PIER, "--log-level", "warn", "serve", "http", "--listen",
                             f"127.0.0.1:{pier_port}"], stderr=subprocess.DEVNULL)
    try:
        wait_port(pier_port)
        pier_rps = wrk(f"http://127.0.0.1:{pier_port}/time", duration)
    finally:
        pier.kill()
    return "\n".join([
        "| server | requests/s (wrk -t2 -c50, keep-alive) |", "|---|---|",
        f"| nginx `return 200 \"ok\"` | {nginx_rps:,.0f} |",
        f"| pier http plugin `GET /time` (JSON built in the guest) | {pier_rps:,.0f} |",
        f"\npier/nginx: **{pier_rps / nginx_rps:.2f}×**."])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", default="5s")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--quick", action="store_true", help="1 s runs, 1 round (a smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.rounds, args.idle = "1s", 1, 1000
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    print(f"Machine: {machine()}\n")
    print(f"Command: `python3 host/benches/run.py --duration {args.duration} --rounds {args.rounds}`\n")
    print(f"### Echo, {args.connections} connections, 16 B frames, median of {args.rounds} "
          f"alternating rounds of {args.duration}\n")
    print(echo_table(args.duration, args.rounds, args.connections))
    print(f"\n### WebSocket echo (native: tokio-tungstenite), {args.connections} connections, 16 B "
          f"text messages\n")
    print(echo_table(args.duration, args.rounds, args.connections, WEBSOCKET_CASES))
    print(f"\n### Idle connections\n\n{idle_table(args.idle)}")
    print(f"\n### The seed's Python server\n\n{knsock_table(args.duration, args.connections)}")
    print(f"\n### HTTP\n\n{http_table(args.duration)}")
    print(f"\n### TLS (TLS 1.3, ECDSA P-256 certificate from `pier cert generate`)\n\n"
          f"{tls_table(args.duration, args.rounds, args.connections)}")


if __name__ == "__main__":
    main()
