"""When the latency tail happened, and what the machine was doing at that moment.

On this shared 2-core VM a 20 s run at 2 000 req/s has its p99 set by 400 requests. If
one stall of 0.2 s hits, it makes all of them slow. The load generators list every
measured request slower than `Plan.slow_after`, with its scheduled time. A `Sampler`
thread reads the machine's counters every 50 ms over the same window. For each burst of
slow requests, `explain` then lays out what the kernel counted:
- time stolen by the hypervisor (`steal` in /proc/stat);
- time runnable tasks waited for a CPU (`/proc/pressure/cpu`);
- time tasks waited for I/O (`/proc/pressure/io`);
- file pages read back after the kernel had evicted them (`workingset_refault_file` in
  /proc/vmstat; this VM's DAMON pages out memory it finds cold);
- the CPU the processes under test ran, and how long they sat runnable waiting for one
  (/proc/PID/task/*/schedstat, nanoseconds; /proc/PID/stat counts 10 ms ticks, too coarse
  for a 50 ms sample);
- which other processes ran ("everything else", by process name: the load generator,
  Kafka's JVM, Postgres, ...), from every process's /proc/PID/stat, read every
  `OTHERS_EVERY` samples only (a scan costs ~1 ms) and so widened to those reads.
Each of these is also given for the calm part of the same window, for comparison.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from scripts.bench.cpu import machine_ticks, process_times, read_proc

TICK = 1.0 / os.sysconf("SC_CLK_TCK")
EVERY = 0.05  # seconds between samples
BURST_GAP = 0.1  # slow requests further apart than this (scheduled time) are two bursts
SHOWN = 5  # bursts listed one by one (the worst by count)
STOLEN = 0.2  # a burst during which steal took this share of a core counts as the VM's
OTHERS_EVERY = 5  # samples between two scans of every process (0.25 s)
OTHERS_SHOWN = 3  # other processes named per burst, the busiest first
OTHERS_MIN = 0.05  # ... each that ran at least this share of a core


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # Unix time
    steal: float  # seconds of CPU stolen, all cores, since boot
    machine: float  # seconds of CPU this machine's own work used (not steal), since boot
    cpu_wait: float  # seconds some task waited for a CPU (PSI "some"), since boot
    io_wait: float  # seconds some task waited for I/O (PSI "some"), since boot
    refaults: int  # file pages read back after eviction, since boot
    busy: dict[str, float]  # group -> seconds its threads ran on a CPU
    queued: dict[str, float]  # group -> seconds its threads were runnable but not running
    # pid -> (name, seconds it ran since it started) of every process outside the groups,
    # in one sample of every OTHERS_EVERY; None in the others
    others: dict[int, tuple[str, float]] | None = None


def _pressure(kind: str) -> float:
    try:
        first = Path(f"/proc/pressure/{kind}").read_text().split("\n", 1)[0]
    except OSError:  # kernel without PSI: report zero rather than fail the benchmark
        return 0.0
    return int(first.rsplit("total=", 1)[1]) / 1e6


def _refaults() -> int:
    for line in Path("/proc/vmstat").read_text().splitlines():
        if line.startswith("workingset_refault_file "):
            return int(line.split()[1])
    return 0


def _scheduled(pids: tuple[int, ...]) -> tuple[float, float]:
    """(ran, queued) seconds of every thread of these processes, from schedstat."""
    ran = queued = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:  # the process is gone
            continue
        for task in tasks:
            try:
                on_cpu, waiting, _slices = read_proc(f"/proc/{pid}/task/{task}/schedstat").split()
            except (OSError, ValueError):  # a thread that ended while we looked
                continue
            ran += int(on_cpu)
            queued += int(waiting)
    return ran / 1e9, queued / 1e9


def _others(grouped: frozenset[int]) -> dict[int, tuple[str, float]]:
    """Every process but `grouped`: its name (comm) and user + system seconds."""
    return {pid: (comm, ticks * TICK) for pid, comm, ticks in process_times(grouped)}


def take(groups: dict[str, tuple[int, ...]], with_others: bool = False) -> Sample:
    machine = machine_ticks()
    scheduled = {g: _scheduled(pids) for g, pids in groups.items()}
    grouped = frozenset(pid for pids in groups.values() for pid in pids)
    return Sample(
        at=time.time(),
        steal=machine.steal * TICK,
        machine=machine.work * TICK,
        cpu_wait=_pressure("cpu"),
        io_wait=_pressure("io"),
        refaults=_refaults(),
        busy={g: ran for g, (ran, _) in scheduled.items()},
        queued={g: queued for g, (_, queued) in scheduled.items()},
        others=_others(grouped) if with_others else None,
    )


class Sampler:
    """Samples in a thread of its own from `start()` to `stop()`. Reading a handful of
    /proc files 20 times a second costs well under 1% of a core."""

    def __init__(self, groups: dict[str, tuple[int, ...]]) -> None:
        self.groups = groups
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tail-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join()
        return self.samples

    def _run(self) -> None:
        n = 0
        while True:
            self.samples.append(take(self.groups, with_others=n % OTHERS_EVERY == 0))
            n += 1
            if self._stop.wait(EVERY):
                break


@dataclass(frozen=True, slots=True)
class Burst:
    start: float  # Unix time of the first slow request's scheduled send
    end: float  # Unix time the last slow request of the burst was answered
    count: int
    worst: float  # seconds


def bursts(window_start: float, slow: list[tuple[float, float]]) -> list[Burst]:
    """Slow requests grouped by scheduled time: a gap over BURST_GAP starts a new one."""
    found: list[Burst] = []
    for at, latency in sorted(slow):
        start = window_start + at
        last = found[-1] if found else None
        if last is not None and start - last.end <= BURST_GAP:
            found[-1] = Burst(
                last.start, max(last.end, start + latency), last.count + 1, max(last.worst, latency)
            )
        else:
            found.append(Burst(start, start + latency, 1, latency))
    return found


@dataclass(frozen=True, slots=True)
class Usage:
    seconds: float
    steal: float
    machine: float
    cpu_wait: float
    io_wait: float
    refaults: int
    busy: dict[str, float]
    queued: dict[str, float]
    # the other processes' busiest, by name: (seconds they ran, over how many seconds)
    others: tuple[tuple[str, float], ...] = ()
    others_seconds: float = 0.0

    def line(self) -> str:
        """Shares of the span's wall time (100% = one core's worth), refaults per second."""
        per = 100.0 / self.seconds if self.seconds > 0 else 0.0
        busy = ", ".join(
            f"{g} ran {v * per:.0f}% queued {self.queued.get(g, 0.0) * per:.0f}%"
            for g, v in self.busy.items()
        )
        rest = self.machine - sum(self.busy.values())
        refaults = self.refaults / self.seconds if self.seconds > 0 else 0.0
        return (
            f"steal {self.steal * per:.0f}%, CPU wait {self.cpu_wait * per:.0f}%, "
            f"I/O wait {self.io_wait * per:.0f}%, {refaults:,.0f} page refaults/s; {busy}, "
            f"everything else {rest * per:.0f}%{self._others()}"
        )

    def _others(self) -> str:
        if not self.others:
            return ""
        per = 100.0 / self.others_seconds
        named = ", ".join(f"{name} {ran * per:.0f}%" for name, ran in self.others)
        return f" (over {self.others_seconds:.2f} s: {named})"


def _between(samples: list[Sample], start: float, end: float) -> Usage:
    """Counters over the samples covering [start, end] (widened to whole samples)."""
    inside = [s for s in samples if start - EVERY <= s.at <= end + EVERY]
    if len(inside) < 2:
        return Usage(0.0, 0.0, 0.0, 0.0, 0.0, 0, {}, {})
    a, b = inside[0], inside[-1]
    usage = _usage(a, b)
    scans = [s for s in samples if s.others is not None]
    before = [s for s in scans if s.at <= start]
    after = [s for s in scans if s.at >= end]
    if not before or not after:
        return usage
    first, last = before[-1], after[0]
    return dataclasses.replace(
        usage, others=_busiest(first, last), others_seconds=last.at - first.at
    )


def _busiest(a: Sample, b: Sample) -> tuple[tuple[str, float], ...]:
    """The other processes that ran most between two scans, by name (a process started
    in between counts from zero; one that ended is not seen)."""
    assert a.others is not None and b.others is not None
    ran: dict[str, float] = {}
    for pid, (name, seconds) in b.others.items():
        _, earlier = a.others.get(pid, (name, 0.0))
        ran[name] = ran.get(name, 0.0) + max(0.0, seconds - earlier)
    floor = OTHERS_MIN * (b.at - a.at)
    ranked = sorted(((n, s) for n, s in ran.items() if s >= floor), key=lambda x: -x[1])
    return tuple(ranked[:OTHERS_SHOWN])


def _usage(a: Sample, b: Sample) -> Usage:
    return Usage(
        seconds=b.at - a.at,
        steal=b.steal - a.steal,
        machine=b.machine - a.machine,
        cpu_wait=b.cpu_wait - a.cpu_wait,
        io_wait=b.io_wait - a.io_wait,
        refaults=b.refaults - a.refaults,
        busy={g: b.busy[g] - a.busy.get(g, 0.0) for g in b.busy},
        queued={g: b.queued[g] - a.queued.get(g, 0.0) for g in b.queued},
    )


def _calm(samples: list[Sample], found: list[Burst]) -> Usage:
    """Sum over the sample intervals that overlap no burst."""
    total = Usage(0.0, 0.0, 0.0, 0.0, 0.0, 0, {}, {})
    for a, b in pairwise(samples):
        if any(a.at - EVERY <= burst.end and burst.start <= b.at + EVERY for burst in found):
            continue
        step = _usage(a, b)
        total = Usage(
            total.seconds + step.seconds,
            total.steal + step.steal,
            total.machine + step.machine,
            total.cpu_wait + step.cpu_wait,
            total.io_wait + step.io_wait,
            total.refaults + step.refaults,
            {g: total.busy.get(g, 0.0) + v for g, v in step.busy.items()},
            {g: total.queued.get(g, 0.0) + v for g, v in step.queued.items()},
        )
    return total


def explain(
    window: tuple[float, float],
    slow: list[tuple[float, float]],
    samples: list[Sample],
    threshold: float,
    what: str = "requests",
) -> list[str]:
    """A summary line, then one line per burst (the SHOWN worst) with the machine beside
    it, then the calm rest of the window. `window` is the measured window's (start, end)
    in Unix time."""
    window_start, window_end = window
    samples = [s for s in samples if window_start - EVERY <= s.at <= window_end + EVERY]
    found = bursts(window_start, slow)
    if not found:
        return [f"no {what.rstrip('s')} over {threshold * 1000:.0f} ms"]
    spans = sum(b.end - b.start for b in found)
    stolen = sum(
        b.count
        for b in found
        if (u := _between(samples, b.start, b.end)).seconds > 0 and u.steal / u.seconds >= STOLEN
    )
    lines = [
        f"{len(slow):,} {what} over {threshold * 1000:.0f} ms in {len(found)} "
        f"burst{'s' if len(found) > 1 else ''} spanning {spans:.2f} s in all; "
        f"{stolen:,} of them in bursts where the hypervisor took {STOLEN:.0%}+ of a core"
    ]
    for burst in sorted(found, key=lambda b: -b.count)[:SHOWN]:
        usage = _between(samples, burst.start, burst.end)
        lines.append(
            f"+{burst.start - window_start:.2f} s for {burst.end - burst.start:.2f} s: "
            f"{burst.count:,} slow, worst {burst.worst * 1000:.0f} ms; {usage.line()}"
        )
    calm = _calm(samples, found)
    if calm.seconds > 0:
        lines.append(f"the rest of the window ({calm.seconds:.1f} s): {calm.line()}")
    return lines


def markdown(lines: list[str], indent: str = "") -> list[str]:
    """explain()'s lines as a bullet and its sub-bullets."""
    if not lines:
        return []
    return [f"{indent}- {lines[0]}", *(f"{indent}  - {line}" for line in lines[1:])]
