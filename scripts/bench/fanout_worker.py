"""Runs one fan-out worker (`python -m fanout`) as a child process against the bench
database, Redis db and topics, reads its /metrics, and stops it with SIGTERM (its
graceful path, which also lets a profiler write its report)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from scripts.bench import common
from scripts.bench.common import BenchError
from scripts.bench.fanout_common import ROOT, Target
from scripts.bench.progress import note
from scripts.supervise import procs

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    target: Target
    settings_env: Mapping[str, str]  # FANOUT_* etc. the run was asked for
    root: Path = ROOT  # another checkout (a patched copy) to compare against
    module: str = "fanout"  # scripts.bench.profiled to profile it
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def env(self, port: int, group: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.target.database_url,
            DATABASE_READ_URL=common.read_url_for(
                self.target.database_url, env.get("DATABASE_READ_URL", "")
            ),
            REDIS_URL=self.target.redis_url,
            REDIS_CLUSTER="true" if self.target.cluster_url else "false",
            KAFKA_BOOTSTRAP=self.target.base.kafka_bootstrap,
            KAFKA_TOPIC_PREFIX=self.target.topic_prefix,
            FANOUT_PORT=str(port),
            FANOUT_GROUP=group,
            # A fresh group starting at the end: only what this run produces is consumed.
            FANOUT_OFFSET_RESET="latest",
            LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.settings_env)
        env.update(self.extra_env)
        return env


@dataclass(slots=True)
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    group: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self) -> str:
        return procs.tail_of(self.log_path)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"fan-out worker exited with {self.proc.returncode}:\n{self.log_tail()}"
            )

    def _get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics by its series name (with labels, as printed)."""
        status, body = self._get("/metrics")
        if status != 200:
            raise BenchError(f"worker /metrics answered {status}")
        return {name: float(value) for name, value in _SAMPLE.findall(body)}

    def wait_ready(self) -> None:
        procs.wait_ready(
            "fan-out worker",
            lambda: procs.answers_ready(f"http://127.0.0.1:{self.port}/readyz"),
            [self.proc],
            timeout=READY_TIMEOUT,
            interval=0.2,
            log_tail=self.log_tail,
        )

    def wait_assigned(self, topic: str, partitions: int) -> None:
        """Until the worker reports lag for every partition of `topic`: only then has it
        fixed its start offsets, so nothing produced afterwards can be skipped."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            self.check_alive()
            lag = [n for n in self.metrics() if n.startswith("fanout_consumer_lag{")]
            if sum(f'topic="{topic}"' in n for n in lag) >= partitions:
                return
            time.sleep(0.2)
        raise BenchError(f"worker not assigned {topic} in {READY_TIMEOUT:.0f} s")


def _stop(worker: Worker) -> None:
    procs.stop(
        [worker.proc],
        STOP_TIMEOUT,
        on_kill=lambda _: note("worker: no exit after SIGTERM; killing it"),
    )


@contextmanager
def running_worker(config: WorkerConfig, log_dir: Path) -> Iterator[Worker]:
    port = procs.free_port()
    group = f"bench-fanout-{uuid.uuid4().hex[:8]}"
    log_path = log_dir / f"fanout-worker-{port}.log"
    args = [sys.executable, "-m", config.module]
    proc = procs.start(args, log_path, cwd=config.root, env=config.env(port, group))
    worker = Worker(proc, port, group, log_path)
    note(f"worker: pid {proc.pid}, port {port}, group {group}, log {log_path}")
    try:
        worker.wait_ready()
        yield worker
    finally:
        _stop(worker)
