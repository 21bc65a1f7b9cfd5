"""Supervision of every service's long-lived tasks (relays, consumers, reporters, lease
renewal, links): each runs as a named child with a policy, and one that dies or returns is
logged with its traceback and either restarted after a back-off or stops the process.
A child waiting to be restarted is a failing `/readyz` entry; restarts are counted in
/metrics. It never swallows CancelledError and never leaves a child running after stop."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from core.service import Check, Ops, stop_tasks

log = logging.getLogger(__name__)

RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_SECONDS = 60.0  # a child that ran this long before failing starts the back-off over
JITTER = 0.2  # ±20%: children of many processes that failed together do not retry together

ChildFactory = Callable[[], Coroutine[Any, Any, None]]


class Policy(enum.Enum):
    RESTART = "restart"
    # For the task a worker exists for (a Kafka consumer): a fresh process, restarted by
    # its process supervisor, rejoins the group with nothing left over from the failure.
    STOP_PROCESS = "stop-process"


@dataclass(frozen=True, slots=True)
class Child:
    """A long-lived task: `run()` is expected to run until cancelled."""

    name: str
    run: ChildFactory
    policy: Policy = Policy.RESTART
    critical: bool = True  # False: reported on /readyz while down, without failing it


class Backoff:
    """Delays before the restarts of one child: growing along `delays` (then the last,
    again and again), with jitter, back to the first once the child ran stably."""

    def __init__(
        self,
        delays: tuple[float, ...] = RESTART_DELAYS,
        stable_seconds: float = STABLE_SECONDS,
        jitter: float = JITTER,
    ) -> None:
        self._delays = delays
        self._stable = stable_seconds
        self._jitter = jitter
        self._failures = 0

    def next(self, ran_seconds: float) -> float:
        """The delay after a failure of a child that ran `ran_seconds`."""
        if ran_seconds >= self._stable:
            self._failures = 0
        delay = self._delays[min(self._failures, len(self._delays) - 1)]
        self._failures += 1
        return delay * random.uniform(1 - self._jitter, 1 + self._jitter)  # noqa: S311


class Supervisor:
    """One per service process (app[SUPERVISOR]); children report into its Ops."""

    def __init__(
        self,
        ops: Ops,
        delays: tuple[float, ...] = RESTART_DELAYS,
        stable_seconds: float = STABLE_SECONDS,
    ) -> None:
        self._ops = ops
        self._delays = delays
        self._stable = stable_seconds
        self._keepers: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._checks: dict[str, Check] = {}
        self.down: dict[str, str] = {}  # child -> why, while it waits to be restarted

    @contextlib.asynccontextmanager
    async def running(self, *children: Child) -> AsyncIterator[None]:
        """Runs `children` for the duration of the block; leaving it (normally, by an
        error or by cancellation) cancels and awaits them, bounded. Meant to wrap the
        `yield` of a cleanup context, so they stop before the clients they use close."""
        started: list[str] = []
        try:
            for child in children:
                self._start(child)
                started.append(child.name)
            yield
        finally:
            await self._stop(started)

    def _start(self, child: Child) -> None:
        if child.name in self._keepers:
            raise ValueError(f"task {child.name} is already supervised")
        check = Check(f"task:{child.name}", lambda: self._probe(child.name), child.critical)
        self._checks[child.name] = check
        self._ops.checks.append(check)
        self._keepers[child.name] = asyncio.create_task(
            self._keep(child), name=f"{self._ops.service}.{child.name}.supervisor"
        )

    async def _stop(self, names: list[str]) -> None:
        tasks = []
        for name in names:
            for owned in (self._keepers, self._running):
                if (task := owned.pop(name, None)) is not None:
                    tasks.append(task)
            if (check := self._checks.pop(name, None)) is not None:
                self._ops.checks.remove(check)
            self.down.pop(name, None)
        # The children too, not only their keepers: a keeper cancelled twice (a stubborn
        # child) must not leave its child running.
        await stop_tasks(tasks)

    async def _probe(self, name: str) -> None:
        """For /readyz (core.service reports a ConnectionError as `down: <why>`)."""
        if (why := self.down.get(name)) is not None:
            raise ConnectionError(why)

    async def _keep(self, child: Child) -> None:
        backoff = Backoff(self._delays, self._stable)
        restarts = self._ops.task_restarts.labels(child.name)
        while True:
            started = time.monotonic()
            task = asyncio.create_task(child.run(), name=f"{self._ops.service}.{child.name}")
            self._running[child.name] = task
            self.down.pop(child.name, None)
            try:
                await asyncio.wait([task])
            except asyncio.CancelledError:
                task.cancel()  # awaited by _stop, which cancelled us
                raise
            ran = time.monotonic() - started
            why, exc = _why(task)
            self.down[child.name] = why
            if child.policy is Policy.STOP_PROCESS:
                log.critical(
                    "task %s died after %.1f s (%s); stopping the process",
                    child.name,
                    ran,
                    why,
                    exc_info=exc,
                )
                stop_process(self._ops, f"task {child.name} died: {why}")
                return
            delay = backoff.next(ran)
            log.error(
                "task %s died after %.1f s (%s); restarting in %.1f s",
                child.name,
                ran,
                why,
                delay,
                exc_info=exc,
            )
            await asyncio.sleep(delay)
            restarts.inc()


def _why(task: asyncio.Task[None]) -> tuple[str, BaseException | None]:
    """Why a child ended, and its exception (for the traceback), if any."""
    if task.cancelled():
        return "cancelled", None
    if (exc := task.exception()) is not None:
        return f"{type(exc).__name__}: {exc}", exc
    return "returned", None


def stop_process(ops: Ops, reason: str) -> None:
    """Stop this process as if its supervisor had sent SIGTERM (the same bounded,
    graceful shutdown), then exit 1 with `reason` (core.service.run reads ops.failure),
    so whatever runs it sees a failure and starts a fresh one. The first reason stays."""
    if ops.failure is None:
        ops.failure = reason
    os.kill(os.getpid(), signal.SIGTERM)


SUPERVISOR = web.AppKey("supervisor", Supervisor)
