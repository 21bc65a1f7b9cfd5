"""Test environment: an isolated database, Redis db and Kafka topic prefix per test run,
all on the real local stack (scripts/stack.py), never mocks."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# Overridable so that several test runs can share one stack (each with its own db: a run
# flushes its db at start).
TEST_REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "9"))


def base_settings() -> Settings:
    return Settings.from_env()


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def isolated_settings(base: Settings, run_id: str) -> Settings:
    redis_parts = urlsplit(base.redis_url)
    return dataclasses.replace(
        base,
        database_url=with_database(base.database_url, f"feed_test_{run_id}"),
        # The replica replays the primary's databases, the test run's included.
        database_read_url=base.database_read_url
        and with_database(base.database_read_url, f"feed_test_{run_id}"),
        redis_url=urlunsplit(redis_parts._replace(path=f"/{TEST_REDIS_DB}")),
        kafka_topic_prefix=f"test-{run_id}-",
        kafka_partitions=3,
        startup_timeout=15.0,
    )


def new_run_id() -> str:
    return uuid.uuid4().hex[:10]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce `settings` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    for f in dataclasses.fields(settings):
        env[f.name.upper()] = str(getattr(settings, f.name))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_module(
    settings: Settings, module: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m module args...` as an operator runs it, with `settings` in its
    environment; its output captured, its exit code not checked."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "stack.py"), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
