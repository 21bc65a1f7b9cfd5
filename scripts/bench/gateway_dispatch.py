"""Python CPU per fan-in message in the gateway, in one process, without sockets.

    .venv/bin/python -m scripts.bench.gateway_dispatch [--roots .,/tmp/base] [--reads 42,256]

The end-to-end benchmark (gateway_throughput) spends about half of the gateway's core in
the kernel's send() and shares the machine with Redis and the clients, so a change worth
10% of the Python part disappears in its run-to-run noise. This isolates that part: the
gateway's own pub/sub parser, hub, clients, Flusher and WebSocket framing, fed the bytes
Redis would send for one message to each of 10 000 users (one connection each), in socket
reads of a given size, writing frames to a transport whose write() is a C no-op. What it
leaves out: the system calls, uvloop's own bookkeeping and the event loop's polling.

Each measurement runs in a fresh interpreter with the tree under test first on
`PYTHONPATH`, trees alternating, so two checkouts compare on the same machine minute.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from scripts.bench.progress import note

ROOT = Path(__file__).resolve().parents[2]
USERS = 10_000

# Runs in the child, against whichever tree is first on sys.path: nothing from scripts/.
CHILD = r"""
import asyncio, collections, statistics, sys, time, types
import orjson, uvloop
from prometheus_client import CollectorRegistry, Histogram
from gateway.broker import _PubSubProtocol
from gateway.client import Client, Flusher, QueueLimits
from gateway.hub import Hub
from gateway.latency import DeliveryLatency
from gateway.protocols.websocket import WebSocketProtocol

users, read_bytes, repeats = (int(a) for a in sys.argv[1:4])
payload = orjson.dumps({"type": "post", "id": "7394112345678901234", "author": {"id": "12",
    "handle": "someone"}, "text": "x" * 250, "created_at": "2026-11-21T10:00:00Z"})


async def main():
    hub, flusher = Hub(), Flusher()
    sink = collections.deque(maxlen=1)
    socket = types.SimpleNamespace(write=sink.append, is_closing=bool, get_write_buffer_size=int)
    latency = DeliveryLatency(Histogram("x", "x", registry=CollectorRegistry()))
    for user in range(1, users + 1):
        ws = WebSocketProtocol(None)
        ws.connection_made(socket)
        client = Client(user, ws, QueueLimits(1000, 1 << 20), lambda *a: None, latency, flusher)
        client.finish_replay()
        ws.client = client
        hub.add(client, [])
    delivered = 0

    def on_message(channel, data):
        nonlocal delivered
        delivered += hub.dispatch(channel, data)

    proto = _PubSubProtocol(on_message, lambda reply: None, lambda p: None)
    stream = b"".join(
        b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
        % (len(ch), ch, len(payload), payload)
        for ch in (b"u:%d" % u for u in range(1, users + 1))
    )
    reads = [stream[i : i + read_bytes] for i in range(0, len(stream), read_bytes)]
    per_message = []
    for _ in range(repeats):
        started = time.process_time()
        for data in reads:
            proto.data_received(data)
            await asyncio.sleep(0)  # one loop turn per read: the Flusher writes
        per_message.append((time.process_time() - started) * 1e6 / users)
    assert delivered == repeats * users and sink, "not every message reached a socket"
    print(statistics.median(per_message), min(per_message))


uvloop.run(main())
"""


def measure(root: Path, read_kib: int, repeats: int) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(USERS), str(read_kib * 1024), str(repeats)],
        env=env,
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--roots", default=str(ROOT), help="comma-separated checkouts to compare")
    p.add_argument("--reads", default="42,256", help="socket read sizes in KiB (uvloop: <= 256)")
    p.add_argument("--rounds", type=int, default=3, help="alternating measurements per tree")
    p.add_argument("--repeats", type=int, default=15, help="passes over the users per measurement")
    args = p.parse_args()
    roots = [Path(r).resolve() for r in args.roots.split(",")]
    reads = [int(r) for r in args.reads.split(",")]
    results: dict[tuple[Path, int], list[float]] = {}
    total, done = args.rounds * len(roots) * len(reads), 0
    for _ in range(args.rounds):
        for read_kib in reads:
            for root in roots:
                _, best = measure(root, read_kib, args.repeats)
                results.setdefault((root, read_kib), []).append(best)
                done += 1
                note(f"[{done}/{total}] {root}, reads of {read_kib} KiB: {best:.2f} us")
    print(f"\n{USERS:,} users, one connection each, one message each per pass; CPU us per message")
    print("(best pass of each measurement; median and range over the rounds)\n")
    print("| tree | read size | us per message | range |")
    print("|---|---:|---:|---:|")
    for (root, read_kib), found in results.items():
        print(
            f"| {root} | {read_kib} KiB | {statistics.median(found):.2f} "
            f"| {min(found):.2f}-{max(found):.2f} |"
        )


if __name__ == "__main__":
    main()
