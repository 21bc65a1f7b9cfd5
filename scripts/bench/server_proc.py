"""Runs the API server as a child process pointed at the bench database and Redis db,
waits until /readyz says ready, and stops it with SIGTERM (its graceful path) at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from scripts.bench import common

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    database_url: str
    redis_url: str
    port: int
    throttle_max: int
    module: str = "server"  # or scripts.bench.profiled_server to profile it
    root: Path = ROOT  # another checkout's root compares a patched server (A/B)
    # More than one needs a server that binds with SO_REUSEPORT (the gateway does; the API
    # server at the time of writing does not, so the second one exits: "port in use").
    processes: int = 1
    extra_env: tuple[tuple[str, str], ...] = ()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            SERVER_PORT=str(self.port),
            FANOUT_THROTTLE_MAX=str(self.throttle_max),
            FANOUT_PUSH_MAX=str(min(common.PUSH_MAX, self.throttle_max)),
            SECRET_KEY=common.BENCH_SECRET,
            # Its outbox relay publishes nothing here (no writes), but keep it off dev topics.
            KAFKA_TOPIC_PREFIX="bench.",
            LOG_LEVEL="WARNING",
        )
        env.update(self.extra_env)
        # The server's packages come from `root`; the bench's own modules from this checkout.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.root), str(ROOT), env.get("PYTHONPATH", "")) if p
        )
        return env


@dataclass(frozen=True, slots=True)
class RunningServer:
    pids: tuple[int, ...]
    base_url: str
    log_path: Path


def answers_ready(base_url: str) -> bool:
    """Whether an HTTP server on `base_url` answers /readyz with 200."""
    try:
        with urllib.request.urlopen(base_url + "/readyz", timeout=2) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_ready(procs: list[subprocess.Popen[bytes]], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        _check_alive(procs, log_path)
        if answers_ready(base_url):
            if len(procs) > 1:  # give the others time to bind, or to fail binding
                time.sleep(2.0)
                _check_alive(procs, log_path)
            return
        time.sleep(0.2)
    raise common.BenchError(f"server not ready after {READY_TIMEOUT:.0f} s (log: {log_path})")


def _check_alive(procs: list[subprocess.Popen[bytes]], log_path: Path) -> None:
    for proc in procs:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise common.BenchError(f"server exited with {proc.returncode}:\n{tail}")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        proc.terminate()  # SIGTERM to our own children, by pid
    for proc in running:
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)


@contextmanager
def running_server(config: ServerConfig) -> Iterator[RunningServer]:
    log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, kept for reading
        prefix="bench-server-", suffix=".log", delete=False
    )
    log_path = Path(log_file.name)
    base_url = f"http://127.0.0.1:{config.port}"
    if answers_ready(base_url):
        raise common.BenchError(f"something already answers on port {config.port}")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", config.module],
            cwd=config.root,
            env=config.env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        for _ in range(config.processes)
    ]
    try:
        _wait_ready(procs, base_url, log_path)
        yield RunningServer(tuple(p.pid for p in procs), base_url, log_path)
    finally:
        _stop(procs)
        log_file.close()
