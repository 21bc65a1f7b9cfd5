"""The benchmark WebSocket client: what a client process is asked to do (`ClientPlan`),
the shared counters it keeps (`SLOTS`), and go_client_main, a client process's entry point.
The client is Go (scripts/bench/wsclient_go: one thread, own epoll loop) and holds every
socket; go_client_main starts it, relays its counter lines into the shared SLOTS row and
answers the control pipe's "report" and "stop" with what the Go program prints.

Each message is expected to carry {"data": {"t": <ns sent>, "p": <phase>}}; the client
records receive time - t per phase (same machine clock), so latency includes Redis,
the gateway and both kernels' socket queues.
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
import sys
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

import orjson

from scripts.bench.common import BenchError
from scripts.bench.loadgen import build_go

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


SOURCE = Path(__file__).resolve().parent / "wsclient_go"
TOKEN_TTL = 24 * 3600  # a day: longer than any run
# How often at most the Go client prints its counters (when they changed): the
# publisher's closed loop bounds deliveries in flight by the received count.
COUNTER_EVERY = 0.005
# A busy Go client naps this long before its next epoll wait, so one wake-up handles many
# sockets (fan-in at ~70 000 msgs/s: client CPU 39% -> 22% of a core, and the gateway
# delivered more); it adds at most this much to the measured latency.
BATCH_WAIT = 0.0005
STOP_TIMEOUT = 30.0


def wsclient_binary() -> Path:
    """The Go client, built now if missing or older than its source."""
    return build_go(SOURCE, "wsclient")


def go_plan(plan: ClientPlan) -> dict[str, Any]:
    """The Go client's JSON plan; a range of user ids stays a range (3 numbers)."""
    ids = plan.user_ids
    found: dict[str, Any] = {}
    if isinstance(ids, range) and ids.step > 0:
        found["user_range"] = [ids.start, ids.stop, ids.step]
    else:
        found["user_ids"] = list(ids)
    return found | {
        "host": plan.host,
        "port": plan.port,
        "source": plan.source,
        "secret": plan.secret,
        "token_ttl": TOKEN_TTL,
        "connect_rate": plan.connect_rate,
        "concurrency": plan.concurrency,
        "retries": RETRIES,
        "handshake_timeout": HANDSHAKE_TIMEOUT,
        "counter_every": COUNTER_EVERY,
        "batch_wait": BATCH_WAIT,
    }


def parse_report(raw: bytes) -> dict[str, Any]:
    """The Go report line's JSON in the fleet's report shape (int keys, latency as
    array('q') bytes)."""
    data = orjson.loads(raw)
    phases = {}
    for phase, stats in data["phases"].items():
        latency = array("q", base64.b64decode(stats["latency_us"]))
        if sys.byteorder == "big":  # the Go client writes little-endian
            latency.byteswap()
        phases[int(phase)] = {
            "count": stats["count"],
            "first_ns": stats["first_ns"],
            "last_ns": stats["last_ns"],
            "latency_us": latency.tobytes(),
            "slow": [(int(t), int(us)) for t, us in stats["slow"]],
        }
    codes = {int(code): n for code, n in data["close_codes"].items()}
    return {"phases": phases, "close_codes": codes}


def _forward_commands(control: Connection, stdin: IO[bytes]) -> None:
    """Parent's commands to the Go client, until "stop" (or the parent is gone: closing
    stdin then stops the Go client too)."""
    try:
        while True:
            command = control.recv()
            stdin.write(f"{command}\n".encode())
            stdin.flush()
            if command == "stop":
                break
    except (EOFError, OSError):
        pass  # the parent is gone, or the Go client died (its exit is reported)
    finally:
        with contextlib.suppress(OSError):  # it died: nothing to flush into
            stdin.close()


def _relay_output(stdout: IO[bytes], counters: Any, row: int, control: Connection) -> bool:
    """Counter lines into the shared row, report lines to the parent; True once the Go
    client said it stopped."""
    base = row * len(SLOTS)
    for line in stdout:
        if line.startswith(b"c "):
            for slot, value in enumerate(line[2:].split()):
                counters[base + slot] = int(value)
        elif line.startswith(b"r "):
            control.send(parse_report(line[2:]))
        elif line.strip() == b"stopped":
            return True
    return False


def go_client_main(plan: ClientPlan, counters: Any, control: Connection) -> None:
    """Entry point of a client process (multiprocessing, spawn)."""
    exe = wsclient_binary()  # normally built by the parent already: then only a stat
    proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(orjson.dumps(go_plan(plan)) + b"\n")
        proc.stdin.flush()
        # The pipe is read in a thread so that this thread
        # can keep relaying counters, which the publisher waits on.
        forwarder = threading.Thread(
            target=_forward_commands, args=(control, proc.stdin), name="commands", daemon=True
        )
        forwarder.start()
        stopped = _relay_output(proc.stdout, counters, plan.index, control)
        code = proc.wait(STOP_TIMEOUT)
        if not stopped or code != 0:
            raise BenchError(f"the Go client exited with {code} (stopped: {stopped})")
        control.send({"stopped": True})
    finally:
        if proc.poll() is None:
            proc.kill()  # our own child: this process is going away
            proc.wait()
