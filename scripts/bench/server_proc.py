"""Runs the API server as a child process pointed at the bench database and Redis db,
waits until /readyz says ready, and stops it with SIGTERM (its graceful path) at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from scripts.bench import common
from scripts.supervise import procs

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    database_url: str
    redis_url: str
    port: int
    throttle_max: int
    module: str = "server"  # or scripts.bench.profiled to profile it
    root: Path = ROOT  # another checkout's root compares a patched server (A/B)
    # More than one needs a server that binds with SO_REUSEPORT (the gateway does; the API
    # server at the time of writing does not, so the second one exits: "port in use").
    processes: int = 1
    extra_env: tuple[tuple[str, str], ...] = ()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.database_url,
            DATABASE_READ_URL=common.read_url_for(
                self.database_url, env.get("DATABASE_READ_URL", "")
            ),
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


def _wait_ready(children: list[subprocess.Popen[bytes]], base_url: str, log_path: Path) -> None:
    def ready() -> bool:
        return procs.answers_ready(base_url + "/readyz")

    def log_tail() -> str:
        return procs.tail_of(log_path)

    procs.wait_ready("server", ready, children, timeout=READY_TIMEOUT, log_tail=log_tail)
    if len(children) > 1:  # give the others time to bind, or to fail binding
        time.sleep(2.0)
        procs.wait_ready("server", ready, children, timeout=0, log_tail=log_tail)


@contextmanager
def running_server(config: ServerConfig) -> Iterator[RunningServer]:
    base_url = f"http://127.0.0.1:{config.port}"
    if procs.answers_ready(base_url + "/readyz"):
        raise common.BenchError(f"something already answers on port {config.port}")
    log_path = Path(tempfile.mkdtemp(prefix="bench-server-")) / "server.log"
    args = [sys.executable, "-m", config.module]
    env = config.env()
    children = [
        procs.start(args, log_path, cwd=config.root, env=env) for _ in range(config.processes)
    ]
    try:
        _wait_ready(children, base_url, log_path)
        yield RunningServer(tuple(p.pid for p in children), base_url, log_path)
    finally:
        procs.stop(children, STOP_TIMEOUT)
