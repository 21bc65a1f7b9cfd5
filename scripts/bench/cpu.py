"""The bench scripts' one CPU accountant and reader of /proc (Linux only): CPU per process
group over a window (`snapshot`/`usage`), per named pid (`CpuWindow`), the machine's busy
time and a wait for a quiet machine, a process's RSS and write calls, the machine line.

The load generator, the server and the data stores share one machine; this shows who
spent the cores while latency was measured, including anything else that was running:
"other" is the whole machine's busy time minus ours, so it also covers processes that
started and ended inside the window and time the hypervisor gave to other guests.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
GROUPS = {"postgres": "postgres", "redis-server": "redis", "java": "kafka"}


@dataclass(frozen=True, slots=True)
class MachineTicks:
    """All cores' time since boot, in clock ticks (the first line of /proc/stat). Guest
    time is left out: the kernel counts it in user and nice already."""

    work: int  # user + nice + system + irq + softirq: this machine's processes and kernel
    steal: int  # taken by the hypervisor for other guests while we had work to run
    idle: int  # idle + iowait

    @property
    def busy(self) -> int:
        """Ticks not idle: our work and the hypervisor's steal."""
        return self.work + self.steal

    @property
    def total(self) -> int:
        return self.work + self.steal + self.idle


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), for the reports' machine line."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def machine_ticks() -> MachineTicks:
    """The one reader of /proc/stat for the bench scripts."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return MachineTicks(work=user + nice + system + irq + softirq, steal=steal, idle=idle + iowait)


@dataclass(frozen=True, slots=True)
class Snapshot:
    procs: dict[int, tuple[str, int]]  # pid -> (group, user+system ticks)
    machine: int  # busy ticks of all cores (including steal)


def _group(pid: str, comm: str, bench_db: str, redis_ports: tuple[int, ...]) -> str:
    group = GROUPS.get(comm, "other")
    if group not in ("postgres", "redis"):
        return group
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return group
    words = title.replace("\0", " ").split()
    if group == "redis":  # another Redis server on this machine (another stack) is not ours
        ports = tuple(f":{port}" for port in redis_ports)
        return group if any(w.endswith(ports) for w in words) else "other"
    # Backends are titled "postgres: <user> <database> <client> <state>": one that serves
    # another database (somebody's tests on the shared server) is not ours; the shared
    # processes (checkpointer, WAL writer, ...) are.
    if len(words) >= 4 and words[0] == "postgres:" and "(" in words[3]:
        return group if words[2] == bench_db else "other"
    return group


def read_proc(path: str) -> bytes:
    """A small /proc file, raw: pathlib's read_text costs several times more per file,
    and the samplers read dozens of them many times a second."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def process_times(skip: frozenset[int] = frozenset()) -> Iterator[tuple[int, str, int]]:
    """(pid, name, user + system ticks) of every process but `skip`."""
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in skip:
            continue
        try:
            raw = read_proc(f"/proc/{name}/stat")
        except OSError:  # exited while we looked
            continue
        # comm is in parentheses and may itself hold spaces or parentheses.
        end = raw.rindex(b")")
        fields = raw[end + 2 :].split(maxsplit=14)
        comm = raw[raw.index(b"(") + 1 : end].decode(errors="replace")
        yield int(name), comm, int(fields[11]) + int(fields[12])


def snapshot(bench_db: str = "", redis_ports: tuple[int, ...] = ()) -> Snapshot:
    """Every process's CPU ticks, grouped: our Postgres (backends of `bench_db`), our Redis
    (servers on `redis_ports`), Kafka, and "other"."""
    found = {
        pid: (_group(str(pid), comm, bench_db, redis_ports), ticks)
        for pid, comm, ticks in process_times()
    }
    return Snapshot(found, machine_ticks().busy)


def usage(before: Snapshot, after: Snapshot, named: dict[int, str]) -> dict[str, float]:
    """CPU seconds per group between two snapshots; `named` labels specific pids. "other"
    is at least the machine's busy time minus ours (steal and short-lived processes too)."""
    spent: dict[str, float] = {}
    for pid, (group, ticks) in after.procs.items():
        delta = ticks - before.procs.get(pid, (group, 0))[1]
        if delta > 0:
            name = named.get(pid) or group
            spent[name] = spent.get(name, 0.0) + delta / TICKS
    ours = sum(seconds for group, seconds in spent.items() if group != "other")
    machine = (after.machine - before.machine) / TICKS
    spent["other"] = max(spent.get("other", 0.0), machine - ours)
    return spent


def process_seconds(pid: int) -> float:
    """User + system CPU time a process has used (its threads included)."""
    raw = read_proc(f"/proc/{pid}/stat")
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _seconds_or_zero(pid: int) -> float:
    try:
        return process_seconds(pid)
    except (OSError, ValueError, IndexError):  # exited, or not ours to read
        return 0.0


def machine_busy_seconds() -> float:
    """CPU time spent by everything on the machine (all cores), steal included."""
    return machine_ticks().busy / TICKS


@dataclass(slots=True)
class CpuWindow:
    """CPU used by named processes and by the whole machine between start() and stop():
    on a shared 2-core machine a number means little without who else was running."""

    pids: dict[str, list[int]]
    wall: float = 0.0
    used: dict[str, float] = field(default_factory=dict)
    machine: float = 0.0
    _t0: float = 0.0
    _start: dict[int, float] = field(default_factory=dict)
    _machine0: float = 0.0

    def start(self) -> CpuWindow:
        self._t0 = time.monotonic()
        self._machine0 = machine_busy_seconds()
        self._start = {pid: _seconds_or_zero(pid) for group in self.pids.values() for pid in group}
        return self

    def stop(self) -> CpuWindow:
        self.wall = time.monotonic() - self._t0
        self.machine = machine_busy_seconds() - self._machine0
        self.used = {
            name: sum(_seconds_or_zero(pid) - self._start.get(pid, 0.0) for pid in group)
            for name, group in self.pids.items()
        }
        return self

    def percent(self, name: str) -> float:
        """Percent of one core."""
        return 100.0 * self.used.get(name, 0.0) / max(self.wall, 1e-9)

    def other_percent(self) -> float:
        """Percent of one core used by processes that are not ours (other sessions' tests
        and benchmarks, the shared Postgres...)."""
        ours = sum(self.used.values())
        return 100.0 * max(self.machine - ours, 0.0) / max(self.wall, 1e-9)


def machine_busy(seconds: float = 1.0) -> float:
    """Percent of one core in use over `seconds` (all processes; 200 = two cores full)."""
    before = machine_ticks()
    time.sleep(seconds)
    after = machine_ticks()
    cores = os.cpu_count() or 1
    return 100.0 * cores * (after.busy - before.busy) / max(1, after.total - before.total)


def wait_quiet(threshold: float, timeout: float, ours: Sequence[int] = ()) -> float:
    """Wait (bounded) until the machine is (almost) idle before measuring: other work on
    these cores (a test suite, a build) would be measured as our latency. What `ours` use
    does not count. Returns the last reading, in percent of one core; never fails: a busy
    machine is reported with the numbers, not hidden."""
    deadline = time.monotonic() + timeout
    busy = _busy(ours, 1.0)
    while busy > threshold and time.monotonic() < deadline:
        sys.stderr.write(f"machine busy ({busy:.0f}% of a core); waiting to measure\n")
        busy = _busy(ours, 2.0)
    return busy


def _busy(ours: Sequence[int], seconds: float) -> float:
    if not ours:
        return machine_busy(seconds)
    window = CpuWindow({"ours": list(ours)}).start()
    time.sleep(seconds)
    return window.stop().other_percent()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise OSError(f"no VmRSS for pid {pid}")


def write_calls(pid: int) -> int:
    """Write-class system calls (write, writev, send...) the process has made, from
    /proc/PID/io: per delivered message, how well the gateway coalesces its sends."""
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return 0
    return int(text.split("syscw:", 1)[1].split(None, 1)[0])


def machine() -> str:
    """The reports' machine line."""
    return (
        f"{os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def machine_info() -> dict[str, str]:
    """The machine, for a JSON report."""
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
    }


def kernel_tcp() -> str:
    """The kernel's view (sockets in use, buffer pages): connections cost memory there
    too, on both ends of loopback, outside any process's RSS."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            return line
    return ""


def children_of(pid: int) -> list[int]:
    """Child processes of `pid` (any of its threads' children), from /proc."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass  # gone: nothing of it left to count
    return found
