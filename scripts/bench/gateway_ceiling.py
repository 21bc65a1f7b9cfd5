"""The machine's ceiling for the gateway's input: how many published messages per second
Redis can push to ONE subscriber connection (what a gateway process reads), measured
with a subscriber that costs almost nothing (hiredis on a raw socket, counting only).

Two publishers: redis-benchmark (pipelined PUBLISH of the same payload to one
subscribed channel) and the benchmark's own Lua batch publisher (round robin over many
subscribed channels, exactly what gateway_throughput sends).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import re
import selectors
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from typing import Any

import hiredis

from core import keys
from gateway.outgoing import ws_frame
from scripts.bench.cpu import CpuWindow
from scripts.bench.gateway_publisher import Publisher, PublishPlan, Template
from scripts.bench.gateway_wsclient import LOST, RECEIVED, SLOTS
from scripts.bench.progress import note
from scripts.supervise import procs

SUBSCRIBE_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class Ceiling:
    lua_msgs_per_s: float
    lua_cpu: dict[str, float]  # percent of a core: redis, publisher, subscriber, other
    benchmark_publish_per_s: float
    benchmark_delivered_per_s: float
    benchmark_cpu: dict[str, float]
    benchmark_subscriber_dropped: bool  # Redis closed it (client-output-buffer-limit)
    payload_bytes: int
    # send() of one WebSocket frame per call to loopback TCP sockets, per core of the
    # sender: what one-message-per-write delivery costs the kernel, whatever the code.
    send_us_per_write: dict[int, float]  # frames per write -> microseconds CPU per send


def _command(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    out += [b"$%d\r\n%s\r\n" % (len(a), a) for a in args]
    return b"".join(out)


def subscriber_main(
    host: str, port: int, channels: list[str], counters: Any, ready: Event, stop: Event
) -> None:
    """Subscribes to `channels` and counts 'message' replies into counters[RECEIVED]."""
    sock = socket.create_connection((host, port))
    reader = hiredis.Reader()
    for start in range(0, len(channels), SUBSCRIBE_CHUNK):
        chunk = [c.encode() for c in channels[start : start + SUBSCRIBE_CHUNK]]
        sock.sendall(_command(b"SUBSCRIBE", *chunk))
    confirmed = 0
    sock.settimeout(0.2)
    received = 0
    while not stop.is_set():
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            continue
        if not data:
            counters[LOST] = 1  # Redis dropped us: fell past its pub/sub buffer limit
            break
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if reply[0] == b"message":
                received += 1
            elif reply[0] == b"subscribe":
                confirmed += 1
                if confirmed == len(channels):
                    ready.set()
        counters[RECEIVED] = received
    sock.close()


def _drain_main(port: int, sockets: int, ready: Event, stop: Event) -> None:
    """Accepts `sockets` connections and reads (and drops) whatever arrives."""
    listener = socket.create_server(("127.0.0.1", port), backlog=sockets)
    ready.set()
    selector = selectors.DefaultSelector()
    for _ in range(sockets):
        conn, _ = listener.accept()
        conn.setblocking(False)
        selector.register(conn, selectors.EVENT_READ)
    while not stop.is_set():
        for key, _ in selector.select(0.2):
            with contextlib.suppress(BlockingIOError):
                key.fileobj.recv(1 << 16)  # type: ignore[union-attr]


def send_ceiling(frame: bytes, sockets: int = 1000, seconds: float = 2.0) -> dict[int, float]:
    """CPU microseconds per send() in this process, round robin over `sockets` loopback
    TCP connections (TCP_NODELAY, as aiohttp sets), for 1, 4 and 16 frames per send."""
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    port = procs.free_port()
    drain = ctx.Process(target=_drain_main, args=(port, sockets, ready, stop))
    drain.start()
    conns: list[socket.socket] = []
    try:
        ready.wait(10)
        for _ in range(sockets):
            conn = socket.create_connection(("127.0.0.1", port))
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conns.append(conn)
        found = {}
        for frames in (1, 4, 16):
            data, sent = frame * frames, 0
            cpu0, t0 = time.process_time(), time.monotonic()
            while time.monotonic() - t0 < seconds:
                for conn in conns:
                    conn.send(data)
                sent += len(conns)
            found[frames] = (time.process_time() - cpu0) / sent * 1e6
        return found
    finally:
        for conn in conns:
            conn.close()
        stop.set()
        drain.join(5)
        if drain.is_alive():
            drain.kill()


def _lua_ceiling(
    redis_url: str, plan: PublishPlan, window: int, seconds: float, redis_pid: int
) -> tuple[float, dict[str, float]]:
    ctx = mp.get_context("spawn")
    counters = ctx.Array("q", len(SLOTS), lock=False)
    ready, stop = ctx.Event(), ctx.Event()
    port = int(re.findall(r":(\d+)", redis_url)[0])
    channels = [keys.user_channel(plan.user_base + i) for i in range(plan.users)]
    sub = ctx.Process(
        target=subscriber_main, args=("127.0.0.1", port, channels, counters, ready, stop)
    )
    sub.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("ceiling subscriber did not subscribe")
        publisher = Publisher(plan, lambda: int(counters[RECEIVED]))
        publisher.closed_loop(window, 1.0, 0)  # warm-up
        base = int(counters[RECEIVED])
        cpu = CpuWindow({"redis": [redis_pid], "subscriber": [sub.pid or 0]}).start()
        started = time.monotonic()
        publisher.closed_loop(window, seconds, 0)
        elapsed = time.monotonic() - started
        cpu.stop()
        rate = (int(counters[RECEIVED]) - base) / elapsed
        publisher.close()
        # The publisher ran in this process: what it used is ours, not "other".
        usage = {k: cpu.percent(k) for k in ("redis", "subscriber")}
        usage["publisher+other"] = cpu.other_percent()
        return rate, usage
    finally:
        stop.set()
        sub.join(5)
        if sub.is_alive():
            sub.kill()


def _benchmark_ceiling(
    redis_url: str, channel: str, payload: bytes, requests: int, redis_pid: int
) -> tuple[float, float, dict[str, float], bool]:
    """redis-benchmark PUBLISHing to one channel our raw subscriber listens on."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return float("nan"), float("nan"), {}, False
    ctx = mp.get_context("spawn")
    counters = ctx.Array("q", len(SLOTS), lock=False)
    ready, stop = ctx.Event(), ctx.Event()
    port = int(re.findall(r":(\d+)", redis_url)[0])
    sub = ctx.Process(
        target=subscriber_main, args=("127.0.0.1", port, [channel], counters, ready, stop)
    )
    sub.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("ceiling subscriber did not subscribe")
        args = [binary, "-h", "127.0.0.1", "-p", str(port), "-c", "4", "-P", "32"]
        args += ["-n", str(requests), "-q", "--csv", "PUBLISH", channel, payload.decode()]
        cpu = CpuWindow({"redis": [redis_pid], "subscriber": [sub.pid or 0]}).start()
        started = time.monotonic()
        out = subprocess.run(args, capture_output=True, text=True, timeout=300, check=True)
        time.sleep(0.2)  # the last messages reach the subscriber
        elapsed = time.monotonic() - started
        cpu.stop()
        # The test name holds the payload's quotes unescaped: count fields from the end.
        rps = float(out.stdout.strip().splitlines()[-1].rsplit(",", 7)[1].strip('"'))
        delivered = int(counters[RECEIVED]) / elapsed
        usage = {k: cpu.percent(k) for k in ("redis", "subscriber")}
        usage["redis-benchmark+other"] = cpu.other_percent()
        return rps, delivered, usage, bool(counters[LOST])
    finally:
        stop.set()
        sub.join(5)
        if sub.is_alive():
            sub.kill()


def measure(
    redis_url: str,
    redis_pid: int,
    user_base: int,
    users: int,
    text_chars: int,
    window: int = 20_000,
    seconds: float = 10.0,
) -> Ceiling:
    note(f"ceiling: Lua batch publisher -> 1 raw subscriber on {users:,} channels")
    plan = PublishPlan(redis_url, user_base, users, 1, text_chars)
    lua_rate, lua_cpu = _lua_ceiling(redis_url, plan, window, seconds, redis_pid)
    note(f"ceiling: {lua_rate:,.0f} msgs/s; now redis-benchmark PUBLISH -> 1 subscriber")
    template = Template.build(text_chars)
    payload = template.head + b"1" + template.mid + b"1" + template.tail(time.time_ns(), 0)
    bench_rps, bench_delivered, bench_cpu, dropped = _benchmark_ceiling(
        redis_url, keys.user_channel(user_base), payload, 1_000_000, redis_pid
    )
    note(f"ceiling: redis-benchmark {bench_rps:,.0f} PUBLISH/s")
    note("ceiling: send() of one frame to loopback TCP sockets")
    sends = send_ceiling(ws_frame(payload))
    note(f"ceiling: {sends[1]:.1f} us CPU per send of one frame")
    return Ceiling(
        lua_rate, lua_cpu, bench_rps, bench_delivered, bench_cpu, dropped, len(payload), sends
    )
