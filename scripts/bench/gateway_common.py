"""What the gateway benchmarks share: a private Redis, gateway processes on one
SO_REUSEPORT port (started through procs.Children, which stops them on exit, error or
Ctrl-C).

Nothing here opens a connection at import time; every process it starts is ours and
is stopped by its pid, never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis

from scripts.bench.common import BenchError

# One BenchError for every bench module: the shared helpers (common, runner) raise it too.
from scripts.supervise import procs

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
# User ids far above anything the app or the other benchmarks create: pub/sub is global
# across Redis db indexes, so our channels must never collide with someone else's.
USER_BASE = 9_000_000_000
SECRET = "gateway-bench-secret-not-for-production"  # noqa: S105 - local benchmark only


# -- the stack -----------------------------------------------------------------------------


@contextlib.contextmanager
def private_redis(children: procs.Children) -> Iterator[str]:
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
    children: procs.Children,
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


def loopback_sources(count: int) -> list[str]:
    """127.0.0.2, 127.0.0.3, ...: each source address has its own ~28 000 ephemeral
    ports, so 100 000 connections to one port need several."""
    return [f"127.0.0.{i + 2}" for i in range(count)]
