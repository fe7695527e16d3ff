#!/usr/bin/env python3
"""A chat room of many members over three pier nodes, against the same room on one node and
against Redis pub/sub delivering to the same number of subscribers; prints the BENCHMARKS.md
table.

    cargo build --release && python3 host/benches/cluster.py [--members 1000] [--messages 200]

Each setup: MEMBERS line clients (the built-in chat; named, so in the room), spread round robin
over the nodes, one of them the sender. The sender says MESSAGES lines, one every --gap ms, each
carrying its send time; every other member receives each line once. Measured: deliveries per
second (all lines received by all members, over the time from the first send to the last
delivery) and the delivery latency (receive time minus send time, same clock) at p50 and p99.
Redis: MEMBERS connections SUBSCRIBEd to one channel, the sender PUBLISHes the same lines.
Every client runs in this one asyncio process, so the figures include the client's own cost,
the same for all three setups; everything shares this machine's cores.
"""
import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIER = os.path.join(ROOT, "target", "release", "pier")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port}")


def start_pier(port, folder, nats=None, node=None):
    args = [PIER, "serve", "chat", "--framing", "lines", "--listen", f"127.0.0.1:{port}",
            "--max-connections", "5000", "--max-connections-per-address", "0",
            "--write-queue", "4096"]
    if nats:
        args += ["--cluster", nats, "--node", node]
    env = dict(os.environ, PIER_CACHE_DIR=os.path.join(folder, "cache"))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc, "pier")
    return proc


async def chat_member(port, name):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    await reader.readline()  # the name prompt
    while True:
        writer.write(f"{name}\n".encode())
        await writer.drain()
        answer = await reader.readline()
        while answer.endswith(b" joined the chat\n"):  # earlier members' notices
            answer = await reader.readline()
        if answer.startswith(b"Hello "):
            return reader, writer
        if not answer.startswith(b"Names cannot be checked"):
            raise RuntimeError(f"{name}: {answer!r}")
        await asyncio.sleep(0.1)


async def deliver(receivers, send, messages, gap, is_message):
    latencies = []
    done = asyncio.Event()
    expected = len(receivers) * messages
    last = [0.0]

    async def receive(reader):
        got = 0
        while got < messages:
            line = await reader.readline()
            if not line:
                return
            if not is_message(line):
                continue
            now = time.perf_counter_ns()
            sent = int(line.rsplit(b"t=", 1)[1])
            latencies.append((now - sent) / 1000)
            got += 1
            last[0] = time.perf_counter()
        if len(latencies) >= expected:
            done.set()

    tasks = [asyncio.create_task(receive(r)) for r, _ in receivers]
    start = time.perf_counter()
    for i in range(messages):
        await send(f"msg {i} t={time.perf_counter_ns()}")
        await asyncio.sleep(gap / 1000)
    try:
        await asyncio.wait_for(done.wait(), 120)
    except asyncio.TimeoutError:
        pass
    for t in tasks:
        t.cancel()
    elapsed = (last[0] or time.perf_counter()) - start
    latencies.sort()
    return {
        "delivered": len(latencies),
        "expected": expected,
        "rate": len(latencies) / elapsed if elapsed > 0 else 0,
        "p50": latencies[len(latencies) // 2] if latencies else 0,
        "p99": latencies[int(len(latencies) * 0.99)] if latencies else 0,
    }


async def pier_room(ports, members, messages, gap):
    async def sender(writer):
        async def send(text):
            writer.write(f"{text}\n".encode())
            await writer.drain()
        return send
    clients = []
    for i in range(members):
        clients.append(await chat_member(ports[i % len(ports)], f"m{i}"))
    for port_index in range(len(ports)):
        reader, writer = clients[port_index]
        deadline = time.monotonic() + 120
        while True:
            writer.write(b"/list\n")
            await writer.drain()
            while True:
                line = await reader.readline()
                if line.startswith(b"Online ("):
                    break
            if line.startswith(f"Online ({members})".encode()):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("room never complete")
            await asyncio.sleep(0.2)
    send = await sender(clients[0][1])
    result = await deliver(clients[1:], send, messages, gap,
                           lambda line: line.startswith(b"m0: msg "))
    for _, writer in clients:
        writer.close()
    return result


async def redis_room(port, members, messages, gap):
    receivers = []
    for _ in range(members - 1):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        writer.write(b"SUBSCRIBE room\r\n")
        await writer.drain()
        for _ in range(6):  # *3 $9 subscribe $4 room :1
            await reader.readline()
        receivers.append((reader, writer))
    _, publisher = await asyncio.open_connection("127.0.0.1", port)

    async def send(text):
        data = text.encode()
        publisher.write(b"*3\r\n$7\r\nPUBLISH\r\n$4\r\nroom\r\n$%d\r\n%s\r\n" % (len(data), data))
        await publisher.drain()

    # A pushed message is *3, $7, message, $4, room, $N, payload: the payload line is the one.
    result = await deliver(receivers, send, messages, gap, lambda line: line.startswith(b"msg "))
    for _, writer in receivers:
        writer.close()
    publisher.close()
    return result


def start_two_tenants(port_calm, port_noisy, folder, nats, node):
    config = os.path.join(folder, f"{node}.toml")
    with open(config, "w") as f:
        f.write(f"""[cluster]
nats = ["{nats}"]
node = "{node}"
[[listener]]
name = "calm"
address = "127.0.0.1:{port_calm}"
plugin = "chat"
framing = "lines"
[[listener]]
name = "noisy"
address = "127.0.0.1:{port_noisy}"
plugin = "chat"
framing = "lines"
""")
    env = dict(os.environ, PIER_CACHE_DIR=os.path.join(folder, "cache"))
    proc = subprocess.Popen([PIER, "serve", "--config", config], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port_calm, proc, "pier")
    wait_port(port_noisy, proc, "pier")
    return proc


async def neighbour(calm, noisy, messages, gap):
    """Latency of the calm tenant's room across two nodes, quiet and while the noisy tenant's
    members flood their own room across the same nodes (and the same NATS connections)."""
    async def room(ports, names):
        clients = [await chat_member(p, n) for p, n in zip(ports, names)]
        reader, writer = clients[0]
        while True:
            writer.write(b"/list\n")
            await writer.drain()
            line = await reader.readline()
            while not line.startswith(b"Online ("):
                line = await reader.readline()
            if line.startswith(f"Online ({len(names)})".encode()):
                return clients
            await asyncio.sleep(0.2)

    calm_clients = await room(calm, ["c1", "c2"])

    async def send(text):
        calm_clients[0][1].write(f"{text}\n".encode())
        await calm_clients[0][1].drain()

    is_message = lambda line: line.startswith(b"c1: msg ")
    quiet = await deliver(calm_clients[1:], send, messages, gap, is_message)
    noisy_clients = await room(noisy, ["n1", "n2"])
    stop = asyncio.Event()
    flooded = [0]

    async def flood():
        writer = noisy_clients[0][1]
        batch = b"".join(b"flood %d\n" % i for i in range(512))
        while not stop.is_set():
            writer.write(batch)
            await writer.drain()
            flooded[0] += 512

    async def drain():
        reader = noisy_clients[1][0]
        while not stop.is_set():
            if not await reader.read(1 << 16):
                return

    tasks = [asyncio.create_task(flood()), asyncio.create_task(drain())]
    await asyncio.sleep(1)
    started = time.perf_counter()
    loud = await deliver(calm_clients[1:], send, messages, gap, is_message)
    rate = flooded[0] / (time.perf_counter() - started + 1)
    stop.set()
    for t in tasks:
        t.cancel()
    return quiet, loud, rate


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--neighbour", action="store_true",
                        help="instead: a calm tenant's latency while another floods")
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--gap", type=float, default=5.0, help="ms between two sent lines")
    args = parser.parse_args()
    if shutil.which("nats-server") is None or shutil.which("redis-server") is None:
        sys.exit("needs nats-server and redis-server (Debian packages)")
    if args.neighbour:
        with tempfile.TemporaryDirectory() as folder:
            nats_port = free_port()
            nats = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(nats_port), "-js",
                                     "-sd", os.path.join(folder, "js")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs = [nats]
            try:
                wait_port(nats_port, nats, "nats-server")
                ports = [(free_port(), free_port()) for _ in range(2)]
                for (calm, noisy), node in zip(ports, "ab"):
                    procs.append(start_two_tenants(calm, noisy, folder,
                                                   f"nats://127.0.0.1:{nats_port}", node))
                quiet, loud, rate = asyncio.run(neighbour(
                    [p[0] for p in ports], [p[1] for p in ports], args.messages, args.gap))
            finally:
                for p in procs:
                    p.terminate()
        print(f"calm tenant: {args.messages} lines across two nodes, one every {args.gap:g} ms; "
              f"noisy tenant flooding its own room across the same nodes at ~{rate:,.0f} lines/s\n")
        print("| calm tenant's room | delivered | p50 | p99 |")
        print("|---|---|---|---|")
        for name, r in (("quiet", quiet), ("while the other floods", loud)):
            print(f"| {name} | {r['delivered']} of {r['expected']} | {r['p50'] / 1000:.1f} ms | "
                  f"{r['p99'] / 1000:.1f} ms |")
        return
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        procs = []
        try:
            port = free_port()
            procs.append(start_pier(port, folder))
            rows.append(("pier, one node", asyncio.run(
                pier_room([port], args.members, args.messages, args.gap))))
            procs.pop().terminate()

            nats_port = free_port()
            nats = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(nats_port), "-js",
                                     "-sd", os.path.join(folder, "js")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(nats)
            wait_port(nats_port, nats, "nats-server")
            ports = [free_port() for _ in range(3)]
            for i, p in enumerate(ports):
                procs.append(start_pier(p, folder, f"nats://127.0.0.1:{nats_port}", "abc"[i]))
            rows.append(("pier, three nodes over NATS", asyncio.run(
                pier_room(ports, args.members, args.messages, args.gap))))
            for p in procs:
                p.terminate()
            procs.clear()

            redis_port = free_port()
            redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind",
                                      "127.0.0.1", "--save", "", "--appendonly", "no",
                                      "--maxclients", "5000"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(redis)
            wait_port(redis_port, redis, "redis-server")
            rows.append(("Redis pub/sub, one channel", asyncio.run(
                redis_room(redis_port, args.members, args.messages, args.gap))))
        finally:
            for p in procs:
                p.terminate()
    print(f"{args.members} members, {args.messages} lines from one of them, one every "
          f"{args.gap:g} ms\n")
    print("| setup | delivered | deliveries/s | p50 | p99 |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['delivered']} of {r['expected']} | {r['rate']:,.0f} | "
              f"{r['p50'] / 1000:.1f} ms | {r['p99'] / 1000:.1f} ms |")


if __name__ == "__main__":
    main()
