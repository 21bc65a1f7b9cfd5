"""A fleet of benchmark client processes (the Go client, scripts/bench/wsclient_go, through
gateway_wsclient): splits the planned connections over processes and loopback source
addresses, starts them, shows their progress, merges what they received per phase and
stops them (also on errors)."""

from __future__ import annotations

import multiprocessing as mp
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from scripts.bench import cpu
from scripts.bench.common import BenchError
from scripts.bench.gateway_wsclient import SLOTS, ClientPlan, go_client_main, wsclient_binary
from scripts.bench.progress import note
from scripts.bench.report import percentile

CLIENTS = {
    "go": "Go (one thread, own epoll loop, scripts/bench/wsclient_go)",
}
ENTRY_POINTS: dict[str, Callable[[ClientPlan, Any, Connection], None]] = {
    "go": go_client_main,
}


@dataclass(slots=True)
class PhaseResult:
    count: int = 0
    first_ns: int = 0
    last_ns: int = 0
    latency_us: array[int] = field(default_factory=lambda: array("q"))
    slow: list[tuple[int, int]] = field(default_factory=list)  # (publish ns, latency us)

    def merge(self, raw: dict[str, Any]) -> None:
        self.first_ns = min(self.first_ns or raw["first_ns"], raw["first_ns"])
        self.last_ns = max(self.last_ns, raw["last_ns"])
        self.count += raw["count"]
        self.latency_us.frombytes(raw["latency_us"])
        self.slow.extend((int(t), int(us)) for t, us in raw["slow"])

    def slow_since(self, start: float) -> list[tuple[float, float]]:
        """The slow messages as tail.explain takes them: (seconds after `start`, a Unix
        time, that the message was published; latency in seconds)."""
        return [(t / 1e9 - start, us / 1e6) for t, us in self.slow]

    def rate(self) -> float:
        """Messages per second over the span in which this phase's messages arrived."""
        return self.count / max((self.last_ns - self.first_ns) / 1e9, 1e-9)

    def latency_ms(self, quantiles: tuple[float, ...]) -> dict[str, float]:
        ordered = sorted(self.latency_us)
        found = {f"p{q:g}": percentile(ordered, q) / 1000 for q in quantiles}
        found["max"] = (ordered[-1] / 1000) if ordered else float("nan")
        return found


def split_plans(
    user_ids: Sequence[int],
    processes: int,
    sources: list[str],
    port: int,
    secret: str,
    connect_rate: float,
    concurrency: int,
) -> list[ClientPlan]:
    """Connection i goes to process i % processes, so each process holds a slice of
    every user's connections (one slow process then does not starve one user)."""
    return [
        ClientPlan(
            index=i,
            host="127.0.0.1",
            port=port,
            source=sources[i % len(sources)],
            user_ids=user_ids[i::processes],
            secret=secret,
            connect_rate=connect_rate / processes,
            concurrency=max(1, concurrency // processes),
        )
        for i in range(processes)
    ]


class Fleet:
    def __init__(self, plans: list[ClientPlan], client: str = "go") -> None:
        self.plans = plans
        self.client = client
        self._entry = ENTRY_POINTS[client]
        ctx = mp.get_context("spawn")
        self.counters: Any = ctx.Array("q", len(plans) * len(SLOTS), lock=False)
        self._ctx = ctx
        self._procs: list[BaseProcess] = []
        self._pipes: list[Connection] = []
        self.phases: dict[int, PhaseResult] = {}
        self._close_codes: dict[int, dict[int, int]] = {}  # process -> code -> count

    @property
    def pids(self) -> list[int]:
        """The client processes and their children (the Go clients): everything whose CPU
        is the client side's."""
        pids = [p.pid or 0 for p in self._procs]
        return pids + [child for pid in pids for child in cpu.children_of(pid)]

    @property
    def expected(self) -> int:
        return sum(len(p.user_ids) for p in self.plans)

    def start(self) -> Fleet:
        if self.client == "go":
            wsclient_binary()  # built once here, not by every client process at once
        for plan in self.plans:
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(
                target=self._entry, args=(plan, self.counters, child), name=f"client{plan.index}"
            )
            proc.start()
            self._procs.append(proc)
            self._pipes.append(parent)
        if self.client == "go":
            self._wait_children()
        return self

    def _wait_children(self, timeout: float = 60.0) -> None:
        """Until every client process has started its Go client, so that `pids` (taken
        by CPU windows right after start) is complete."""
        deadline = time.monotonic() + timeout
        while not all(cpu.children_of(proc.pid or 0) for proc in self._procs):
            for proc in self._procs:
                if not proc.is_alive():
                    raise BenchError(f"client process {proc.name} died ({proc.exitcode})")
            if time.monotonic() > deadline:
                raise BenchError(f"the Go clients did not start within {timeout:.0f} s")
            time.sleep(0.05)

    def total(self, slot: str) -> int:
        return sum(self.column(slot))

    def column(self, slot: str) -> list[int]:
        index, width = SLOTS.index(slot), len(SLOTS)
        return [self.counters[i] for i in range(index, len(self.counters), width)]

    def connect_span(self) -> float:
        """Seconds from the first connection opened (by any process) to the last."""
        firsts = [ms for ms in self.column("first_ms") if ms]
        return (max(self.column("last_ms")) - min(firsts)) / 1000 if firsts else 0.0

    def wait_connected(
        self, timeout: float, show: Callable[[int, int, float], None] | None = None
    ) -> float:
        """Waits until every planned connection is open or has failed; returns the
        seconds from the first connection to the last (process start-up not counted).
        `show(connected, failed, elapsed)` is called every 2 s."""
        started = time.monotonic()
        shown = started
        while True:
            connected, failed = self.total("connected"), self.total("failed")
            now = time.monotonic()
            if connected + failed >= self.expected:
                return self.connect_span()
            for proc in self._procs:
                if not proc.is_alive():
                    raise BenchError(f"client process {proc.name} died ({proc.exitcode})")
            if now - started > timeout:
                raise BenchError(f"only {connected:,}/{self.expected:,} connected in {timeout} s")
            if show is not None and now - shown >= 2.0:
                shown = now
                firsts = [ms for ms in self.column("first_ms") if ms]
                since = time.time() - min(firsts) / 1000 if firsts else 0.0
                show(connected, failed, max(since, 1e-3))
            time.sleep(0.1)

    def collect(self) -> dict[int, PhaseResult]:
        """What every process received since the last collect, merged into self.phases."""
        for pipe in self._pipes:
            pipe.send("report")
        for index, pipe in enumerate(self._pipes):
            if not pipe.poll(60):
                raise BenchError("a client process did not report within 60 s")
            report = pipe.recv()
            for phase, raw in report["phases"].items():
                self.phases.setdefault(phase, PhaseResult()).merge(raw)
            self._close_codes[index] = report["close_codes"]  # cumulative per process
        return self.phases

    @property
    def close_codes(self) -> dict[int, int]:
        """Close frames the gateway sent, by code (4008: closed as a slow consumer)."""
        total: dict[int, int] = {}
        for codes in self._close_codes.values():
            for code, count in codes.items():
                total[code] = total.get(code, 0) + count
        return total

    def stop(self) -> None:
        for pipe, proc in zip(self._pipes, self._procs, strict=True):
            if proc.is_alive():
                try:
                    pipe.send("stop")
                except OSError:
                    continue
        deadline = time.monotonic() + 60
        for pipe, proc in zip(self._pipes, self._procs, strict=True):
            if proc.is_alive() and pipe.poll(max(deadline - time.monotonic(), 0.1)):
                pipe.recv()
            proc.join(max(deadline - time.monotonic(), 0.1))
            if proc.is_alive():
                note(f"{proc.name} did not stop; killing it")
                proc.kill()
                proc.join(5)
        self._procs, self._pipes = [], []
