"""CPU spent per process group during a measured window, read from /proc (Linux only).

The worker, Redis, Postgres, Kafka and this benchmark share two cores with whatever else
runs on the machine (other benchmarks, test suites): this says who used them. Postgres
backends serving another database and another Redis server count as "other".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scripts.bench.cpu import GROUPS, TICKS

Snapshot = dict[int, tuple[str, int]]  # pid -> (group, user+system ticks)


@dataclass(frozen=True, slots=True)
class Ours:
    """What counts as the benchmark's own Postgres and Redis."""

    database: str
    redis_ports: tuple[int, ...]
    named: dict[int, str]  # pid -> group, e.g. the worker process


def _cmdline(pid: str) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _group(pid: str, comm: str, ours: Ours) -> str:
    group = GROUPS.get(comm, "other")
    if group == "redis":
        words = " ".join(_cmdline(pid)).split()
        ports = tuple(f":{port}" for port in ours.redis_ports)
        return group if any(w.endswith(ports) for w in words) else "other"
    if group == "postgres":
        # Backends are titled "postgres: <user> <database> <client> <state>"; the shared
        # processes (checkpointer, WAL writer, ...) count as ours.
        words = " ".join(_cmdline(pid)).split()
        if len(words) >= 4 and words[0] == "postgres:" and "(" in words[3]:
            return group if words[2] == ours.database else "other"
    return group


def snapshot(ours: Ours) -> Snapshot:
    found: Snapshot = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # comm is in parentheses and may itself hold spaces or parentheses.
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        group = ours.named.get(int(entry.name)) or _group(entry.name, comm, ours)
        found[int(entry.name)] = (group, int(fields[11]) + int(fields[12]))
    return found


def usage(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds per group between two snapshots."""
    spent: dict[str, float] = {}
    for pid, (group, ticks) in after.items():
        delta = ticks - before.get(pid, (group, 0))[1]
        if delta > 0:
            spent[group] = spent.get(group, 0.0) + delta / TICKS
    return spent
