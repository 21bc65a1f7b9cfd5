"""Benchmark client processes: many WebSocket connections to the gateway, each a small
asyncio Protocol speaking just enough RFC 6455 (upgrade, text frames, ping -> pong,
close). A full client library per connection would make the client side, not the
gateway, the bottleneck on a 2-core machine; this one parses a coalesced burst of
frames in one callback and answers the gateway's keepalive pings like a browser.

Each message is expected to carry {"data": {"t": <ns sent>, "p": <phase>}}; the client
records receive time - t per phase (same machine clock), so latency includes Redis,
the gateway and both kernels' socket queues.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, cast

import orjson
import uvloop

from core.auth import TokenSigner

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PONG_EMPTY = b"\x8a\x80\x00\x00\x00\x00"  # masked (all-zero key) empty pong
MAX_HEADER = 16 * 1024
RETRIES = 3
HANDSHAKE_TIMEOUT = 30.0
# A message later than this is also reported with its publish time, so the benchmark can
# say when its tail happened (scripts/bench/tail.py). Half the target p99; the Go client
# has the same (slowUs).
SLOW_US = 50_000
# Shared counters, one row per client process (read by the parent for progress and by
# the publisher to bound messages in flight).
SLOTS = ("connected", "failed", "received", "lost", "pings", "first_ms", "last_ms")
CONNECTED, FAILED, RECEIVED, LOST, PINGS, FIRST_MS, LAST_MS = range(len(SLOTS))


@dataclass(frozen=True, slots=True)
class ClientPlan:
    index: int
    host: str
    port: int
    source: str  # loopback address to bind (its own ephemeral port range)
    # One connection per entry; a user may appear several times. Pass a range where
    # possible: the plan is pickled into a pipe the new process reads only once it has
    # started, and a large list makes starting each client process block for seconds.
    user_ids: Sequence[int]
    secret: str
    connect_rate: float  # new connections per second, this process
    concurrency: int  # handshakes in flight at once


@dataclass(slots=True)
class PhaseStats:
    count: int = 0
    first_ns: int = 0
    last_ns: int = 0
    latency_us: array[int] = field(default_factory=lambda: array("q"))
    slow: list[tuple[int, int]] = field(default_factory=list)  # (publish ns, latency us)


class Sink:
    """Everything this process received, by phase."""

    def __init__(self, counters: Any, row: int) -> None:
        self.phases: dict[int, PhaseStats] = {}
        self.close_codes: dict[int, int] = {}
        self._counters = counters
        self._base = row * len(SLOTS)
        self._received = 0

    def bump(self, slot: int, n: int = 1) -> None:
        self._counters[self._base + slot] += n

    def connected_at(self, ms: int) -> None:
        """Wall-clock span of this process's connects (for the connect rate)."""
        if not self._counters[self._base + FIRST_MS]:
            self._counters[self._base + FIRST_MS] = ms
        self._counters[self._base + LAST_MS] = ms

    def messages(self, payloads: list[bytes], now_ns: int) -> None:
        for payload in payloads:
            data = orjson.loads(payload).get("data")
            if not isinstance(data, dict) or "t" not in data:
                continue
            phase = self.phases.get(data["p"])
            if phase is None:
                phase = self.phases[data["p"]] = PhaseStats(first_ns=now_ns)
            phase.count += 1
            phase.last_ns = now_ns
            latency_us = (now_ns - data["t"]) // 1000
            phase.latency_us.append(latency_us)
            if latency_us > SLOW_US:
                phase.slow.append((data["t"], latency_us))
        self._received += len(payloads)
        self._counters[self._base + RECEIVED] = self._received


class WsConnection(asyncio.Protocol):
    """One connection: handshake, then frames. No task, no queue: data_received parses
    whatever arrived, hands the text payloads to the sink in one call."""

    __slots__ = ("_buf", "_sink", "_transport", "accept", "closed_code", "opened", "request")

    def __init__(self, sink: Sink, request: bytes, accept: bytes) -> None:
        self._sink = sink
        self.request = request
        self.accept = accept
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buf = b""
        self._transport: asyncio.Transport | None = None
        self.closed_code: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during handshake: {exc}"))
        elif self.closed_code is None or self.closed_code != 1000:
            self._sink.bump(LOST)

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self._handshake(data)
        else:
            self._frames(self._buf + data if self._buf else data)

    def close(self) -> None:
        if self._transport is not None:
            self.closed_code = 1000
            self._transport.write(b"\x88\x82\x00\x00\x00\x00\x03\xe8")  # masked close 1000
            self._transport.close()

    def _handshake(self, data: bytes) -> None:
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEADER:
                self._fail("response headers too large")
            return
        head, rest = self._buf[:end], self._buf[end + 4 :]
        self._buf = b""
        if not head.startswith(b"HTTP/1.1 101") or self.accept not in head:
            self._fail(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            return
        self.opened.set_result(None)
        if rest:
            self._frames(rest)

    def _fail(self, why: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(why))
        if self._transport is not None:
            self._transport.close()

    def _frames(self, buf: bytes) -> None:
        pos, end = 0, len(buf)
        texts: list[bytes] = []
        while end - pos >= 2:
            size, head = buf[pos + 1] & 0x7F, 2
            if size == 126:
                if end - pos < 4:
                    break
                size, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif size == 127:
                if end - pos < 10:
                    break
                size, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if end - pos < head + size:
                break
            opcode = buf[pos] & 0x0F
            payload = buf[pos + head : pos + head + size]
            pos += head + size
            if opcode == 0x1:
                texts.append(payload)
            else:
                self._control(opcode, payload)
        self._buf = buf[pos:] if pos < end else b""
        if texts:
            self._sink.messages(texts, time.time_ns())

    def _control(self, opcode: int, payload: bytes) -> None:
        assert self._transport is not None
        if opcode == 0x9:  # ping: a pong with the same payload, masked (client frames)
            self._sink.bump(PINGS)
            if payload:
                header = bytes((0x8A, 0x80 | len(payload))) + b"\x00\x00\x00\x00"
                self._transport.write(header + payload)
            else:
                self._transport.write(PONG_EMPTY)
        elif opcode == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.closed_code = code
            self._sink.close_codes[code] = self._sink.close_codes.get(code, 0) + 1
            self._transport.close()


def upgrade_request(host: str, port: int, token: str) -> tuple[bytes, bytes]:
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())  # noqa: S324 - RFC 6455
    request = (
        f"GET /v1/stream?access_token={token} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    return request, accept


class ClientProcess:
    def __init__(self, plan: ClientPlan, counters: Any) -> None:
        self.plan = plan
        self.sink = Sink(counters, plan.index)
        self.connections: list[WsConnection] = []
        self._signer = TokenSigner(plan.secret, 24 * 3600)
        self._stop = asyncio.Event()

    async def connect_all(self) -> None:
        """Opens every planned connection at a bounded rate; failures are retried a few
        times, then counted."""
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(self.plan.concurrency)
        started = loop.time()
        pending: set[asyncio.Task[None]] = set()
        for n, user_id in enumerate(self.plan.user_ids):
            if self._stop.is_set():
                break
            delay = started + n / self.plan.connect_rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await gate.acquire()
            task = asyncio.create_task(self._connect(user_id, gate))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending)

    async def _connect(self, user_id: int, gate: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        try:
            for attempt in range(RETRIES + 1):
                request, accept = upgrade_request(
                    self.plan.host, self.plan.port, self._signer.issue(user_id)
                )
                try:
                    _, conn = await asyncio.wait_for(
                        loop.create_connection(
                            lambda r=request, a=accept: WsConnection(self.sink, r, a),  # type: ignore[misc]
                            self.plan.host,
                            self.plan.port,
                            local_addr=(self.plan.source, 0),
                        ),
                        HANDSHAKE_TIMEOUT,
                    )
                    await asyncio.wait_for(conn.opened, HANDSHAKE_TIMEOUT)
                except (OSError, TimeoutError, ConnectionError):
                    if attempt == RETRIES:
                        self.sink.bump(FAILED)
                        return
                    await asyncio.sleep(1.0 + attempt)
                    continue
                self.connections.append(conn)
                self.sink.bump(CONNECTED)
                self.sink.connected_at(int(time.time() * 1000))
                return
        finally:
            gate.release()

    def report(self) -> dict[str, Any]:
        phases = {
            p: {
                "count": s.count,
                "first_ns": s.first_ns,
                "last_ns": s.last_ns,
                "latency_us": s.latency_us.tobytes(),
                "slow": s.slow,
            }
            for p, s in self.sink.phases.items()
        }
        self.sink.phases = {}
        return {"phases": phases, "close_codes": dict(self.sink.close_codes)}

    async def serve(self, control: Connection) -> None:
        """Connect, then obey the parent: 'report' sends (and forgets) what was received,
        'stop' closes every connection and returns."""
        connecting = asyncio.create_task(self.connect_all())
        try:
            while True:
                # A thread waits on the pipe: the loop's own reader would make the pipe
                # non-blocking, and a large report would then fail to send.
                command = await asyncio.to_thread(control.recv)
                if command == "report":
                    control.send(self.report())
                elif command == "stop":
                    break
        finally:
            self._stop.set()
            await connecting
            for conn in self.connections:
                conn.close()
            await asyncio.sleep(0.5)  # let the close frames leave
            control.send({"stopped": True})


def client_main(plan: ClientPlan, counters: Any, control: Connection) -> None:
    """Entry point of a client process (multiprocessing, spawn)."""
    uvloop.run(ClientProcess(plan, counters).serve(control))
