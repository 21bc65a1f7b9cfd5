"""What the gateway benchmarks share: a private Redis, gateway processes on one
SO_REUSEPORT port, /proc readings (CPU, RSS, who else is using the machine), and
cleanup that stops every child on exit, error or Ctrl-C.

Nothing here opens a connection at import time; every process it starts is ours and
is stopped by its pid, never by name.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import orjson
import redis

# One BenchError for every bench module: the shared helpers (common, runner) raise it too.
from scripts.bench import procs
from scripts.bench.common import BenchError
from scripts.bench.cpu import CpuWindow, cpu_model

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
# User ids far above anything the app or the other benchmarks create: pub/sub is global
# across Redis db indexes, so our channels must never collide with someone else's.
USER_BASE = 9_000_000_000
SECRET = "gateway-bench-secret-not-for-production"  # noqa: S105 - local benchmark only


def note(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- /proc ---------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def machine_info() -> dict[str, str]:
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
    }


def write_calls(pid: int) -> int:
    """Write-class system calls (write, writev, send...) the process has made, from
    /proc/PID/io: per delivered message, how well the gateway coalesces its sends."""
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return 0
    return int(text.split("syscw:", 1)[1].split(None, 1)[0])


def wait_quiet(ours: Sequence[int], below_percent: float, max_wait: float) -> float:
    """Wait (bounded) until processes that are not ours use less than `below_percent` of
    one core over 2 s; returns what they used last. Never fails: a busy machine is
    reported with the numbers, not hidden."""
    deadline = time.monotonic() + max_wait
    while True:
        window = CpuWindow({"ours": list(ours)}).start()
        time.sleep(2.0)
        other = window.stop().other_percent()
        if other < below_percent or time.monotonic() > deadline:
            return other
        note(f"machine busy ({other:.0f}% of a core used by others); waiting")


# -- children ------------------------------------------------------------------------------


class Children:
    """Every process a benchmark starts. stop_all() runs on normal exit, on an error, on
    Ctrl-C and on SIGTERM; it signals each child by pid (TERM, then KILL)."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._stoppers: list[Callable[[], None]] = []
        self._stopped = False

    def install(self) -> Children:
        atexit.register(self.stop_all)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def popen(self, name: str, args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, **kwargs)  # type: ignore[call-overload]
        self._procs.append((name, proc))
        return proc  # type: ignore[no-any-return]

    def on_stop(self, stopper: Callable[[], None]) -> None:
        self._stoppers.append(stopper)

    def stop_all(self, grace: float = 15.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        for stopper in reversed(self._stoppers):
            with contextlib.suppress(Exception):  # best effort: keep stopping the rest
                stopper()
        # Gateways before Redis: a gateway that loses Redis while shutting down logs
        # errors that are ours, not its.
        last = [(n, p) for n, p in self._procs if n == "redis"]
        self._stop([(n, p) for n, p in self._procs if n != "redis"], grace)
        self._stop(last, grace)

    def _stop(self, named: list[tuple[str, subprocess.Popen[bytes]]], grace: float) -> None:
        names = {proc.pid: name for name, proc in named}

        def on_kill(proc: subprocess.Popen[bytes]) -> None:
            note(f"{names[proc.pid]} (pid {proc.pid}) did not stop; killing it")

        procs.stop([proc for _, proc in named], grace, on_kill)


# -- the stack -----------------------------------------------------------------------------


@contextlib.contextmanager
def private_redis(children: Children) -> Iterator[str]:
    """A Redis of our own on a free port, configured like scripts/stack.py's: pub/sub
    load from a benchmark then neither disturbs nor is disturbed by other sessions'
    commands (pub/sub is global across db indexes). It shares the CPU all the same."""
    server = shutil.which("redis-server")
    if server is None:
        raise BenchError("redis-server not found (or pass --redis-url)")
    port = procs.free_port()
    home = tempfile.mkdtemp(prefix="gateway-bench-redis-")
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    args += ["no", "--maxclients", "10000", "--dir", home, "--protected-mode", "no"]
    proc = children.popen("redis", args, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/7"

    def pings() -> bool:
        try:
            with redis.Redis.from_url(url) as client:
                return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False

    procs.wait_ready("private redis-server", pings, [proc], timeout=10)
    try:
        yield url
    finally:
        shutil.rmtree(home, ignore_errors=True)


def redis_pid(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return int(client.info("server")["process_id"])


def gateway_env(redis_url: str, port: int, **settings: object) -> dict[str, str]:
    """Environment of a gateway process: our Redis, our port, limits that a load test
    needs raised (connects per address), quiet logs. Other settings stay as the dev
    stack has them (DATABASE_URL etc. from our own environment)."""
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": redis_url,
            "GATEWAY_PORT": str(port),
            "SECRET_KEY": SECRET,
            "LOG_LEVEL": "WARNING",
            "GATEWAY_CONNECTS_PER_IP": "1000000",
            "DB_POOL_MIN": "1",
            "DB_POOL_MAX": "4",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({k.upper(): str(v) for k, v in settings.items()})
    return env


@dataclass(frozen=True, slots=True)
class Gateway:
    pid: int
    stats_key: str


def start_gateways(
    children: Children,
    count: int,
    env: dict[str, str],
    redis_url: str,
    root: Path = ROOT,
    log_dir: Path | None = None,
) -> list[Gateway]:
    """Starts `count` gateway processes sharing env["GATEWAY_PORT"] and waits until each
    reports its stats key (it is then subscribed and serving). Their output goes to
    log_dir/gatewayN.log when given (summarised by log_summary), else to our stderr."""
    started = []
    for i in range(count):
        out = None if log_dir is None else (log_dir / f"gateway{i + 1}.log").open("ab")
        args = [PYTHON, "-m", "gateway"]
        started.append(
            children.popen(f"gateway{i + 1}", args, cwd=root, env=env, stdout=out, stderr=out)
        )
        if out is not None:
            out.close()  # the child holds its own copy
    found: dict[str, str] = {}
    with redis.Redis.from_url(redis_url) as client:

        def all_reported() -> bool:
            found.update((k.decode().rsplit(":", 1)[-1], k.decode()) for k in _stats_keys(client))
            return all(str(p.pid) in found for p in started)

        procs.wait_ready(
            "gateways (stats reported)", all_reported, started, timeout=60, interval=0.2
        )
    return [Gateway(p.pid, found[str(p.pid)]) for p in started]


def _stats_keys(client: redis.Redis) -> list[bytes]:
    return list(client.scan_iter(match="stats:gateway:*", count=1000))


def gateway_stats(redis_url: str, gateways: Sequence[Gateway]) -> dict[int, dict[str, int]]:
    """Each gateway's last once-a-second report (missing: it stopped reporting)."""
    with redis.Redis.from_url(redis_url) as client:
        raw = client.mget([g.stats_key for g in gateways])
    return {g.pid: orjson.loads(r) for g, r in zip(gateways, raw, strict=True) if r is not None}


def log_summary(log_dir: Path) -> dict[str, int]:
    """WARNING/ERROR lines the gateways logged, grouped by their text up to the first
    digit (so "presence of 123 not cleared" and "... of 456 ..." count together)."""
    found: dict[str, int] = {}
    for path in sorted(log_dir.glob("gateway*.log")):
        for line in path.read_text(errors="replace").splitlines():
            for level in (" WARNING ", " ERROR ", "Traceback", "Error:"):
                if level in line:
                    text = line.split(level, 1)[-1] if level.startswith(" ") else line
                    key = f"{level.strip()} {_until_digit(text)[:90]}"
                    found[key] = found.get(key, 0) + 1
                    break
    return found


def _until_digit(text: str) -> str:
    for i, char in enumerate(text):
        if char.isdigit():
            return text[:i] + "..."
    return text


def percentile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100.0 * len(ordered)) - 1))
    return float(ordered[index])


def loopback_sources(count: int) -> list[str]:
    """127.0.0.2, 127.0.0.3, ...: each source address has its own ~28 000 ephemeral
    ports, so 100 000 connections to one port need several."""
    return [f"127.0.0.{i + 2}" for i in range(count)]
