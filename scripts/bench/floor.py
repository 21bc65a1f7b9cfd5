"""The machine's latency floor, measured in the same run as each feed rate.

On this shared VM the hypervisor takes a core away for tens to hundreds of milliseconds
at a time (steal), and a 20 s window's p99 is set by its worst 0.4 s. Whether a missed
p99 is the server's or the machine's is told by running the same load generator, at the
same rate, with the same connections and requests, against a server that does no work:
a one-thread Go HTTP server (scripts/bench/floor_go) answering every request with the
bytes of a real feed page. Its p99, measured right after the feed's window, is what the
machine gave a server that does nothing; the feed's cannot be better by design.
"""

from __future__ import annotations

import argparse
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from scripts.bench import common, tail
from scripts.bench.loadgen import Plan, build_go, run_load
from scripts.bench.report import Row, summarize
from scripts.supervise import procs

SOURCE = Path(__file__).resolve().parent / "floor_go"
PORT = common.BENCH_PORT + 10
WARMUP = 2.0  # seconds: the floor server has no caches, only connections to open
READY_TIMEOUT = 10.0
LABEL = "floor: no-op Go server"


@dataclass(frozen=True, slots=True)
class Floor:
    pid: int
    base_url: str


def sample_page(base_url: str, path: str, token: str) -> bytes:
    """One real answer of the server under test, for the floor to send back."""
    request = urllib.request.Request(  # noqa: S310 - our own server on loopback
        base_url + path, headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            return bytes(resp.read())
    except (urllib.error.URLError, OSError) as exc:
        raise common.BenchError(f"reading a sample page for the floor server: {exc}") from None


@contextmanager
def running_floor(body: bytes, port: int = PORT) -> Iterator[Floor]:
    """The floor server answering `body` on 127.0.0.1:`port`, stopped on exit."""
    base_url = f"http://127.0.0.1:{port}"
    if procs.answers_ready(base_url + "/readyz"):
        raise common.BenchError(f"something already answers on port {port}")
    binary = build_go(SOURCE, "floor")
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        page = Path(tmp) / "page.json"
        page.write_bytes(body)
        with procs.running(
            f"floor server on {base_url}",
            [str(binary), "-addr", f"127.0.0.1:{port}", "-body", str(page)],
            lambda: procs.answers_ready(base_url + "/readyz"),
            Path(tmp) / "floor.log",
            timeout=READY_TIMEOUT,
            grace=5.0,
            interval=0.05,
        ) as proc:
            yield Floor(proc.pid, base_url)


def measure_floor(args: argparse.Namespace, plan: Plan, body: bytes) -> tuple[Row, list[str]]:
    """The feed's plan (rate, connections, requests, measured seconds) against the floor
    server: its row (its CPU in the "server" column) and when its slow requests came."""
    with running_floor(body) as floor:
        floor_plan = replace(plan, base_url=floor.base_url, warmup=WARMUP)
        sampler = tail.Sampler({"floor": (floor.pid,)}).start()
        try:
            result, spent = run_load(args, floor_plan, (floor.pid,))
        finally:
            samples = sampler.stop()
    window = (result.window_start, result.window_start + floor_plan.duration)
    lines = tail.explain(window, result.slow, samples, floor_plan.slow_after)
    return summarize(LABEL, result, spent), lines
