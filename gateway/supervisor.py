"""Supervision of a node's long-lived tasks (pub/sub link, subscriptions, presence,
stats...): a child that dies, or returns, is logged with its traceback and restarted
after a back-off; while it is down the node reports not ready (/readyz), so a dead task
is never silent. Cancelling the supervisor cancels and awaits every child."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from core.service import stop_tasks

log = logging.getLogger(__name__)

RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_SECONDS = 60.0  # a child that ran this long before failing starts the back-off over

ChildFactory = Callable[[], Coroutine[Any, Any, None]]


class Supervisor:
    def __init__(
        self,
        name: str,
        children: dict[str, ChildFactory],
        on_restart: Callable[[str], None] | None = None,
        delays: tuple[float, ...] = RESTART_DELAYS,
    ) -> None:
        self._name = name
        self._children = children
        self._on_restart = on_restart
        self._delays = delays
        self._failures = dict.fromkeys(children, 0)
        self._started: dict[str, float] = {}
        self.down: dict[str, str] = {}  # child -> why, while it waits to be restarted

    async def probe(self) -> None:
        """For /readyz: raises while a child is down."""
        if self.down:
            raise ConnectionError(
                "; ".join(f"task {name} down: {why}" for name, why in sorted(self.down.items()))
            )

    async def run(self) -> None:
        tasks = {self._spawn(name, 0.0): name for name in self._children}
        try:
            while True:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    name = tasks.pop(task)
                    tasks[self._spawn(name, self._failed(name, task))] = name
        finally:
            await stop_tasks(list(tasks))

    def _failed(self, name: str, task: asyncio.Task[None]) -> float:
        """Log why a child ended; returns the delay before it is restarted."""
        ran = time.monotonic() - self._started.get(name, time.monotonic())
        if ran > STABLE_SECONDS:
            self._failures[name] = 0
        delay = self._delays[min(self._failures[name], len(self._delays) - 1)]
        self._failures[name] += 1
        if task.cancelled():
            why = "cancelled"
            log.error("task %s was cancelled; restarting in %.1f s", name, delay)
        elif (exc := task.exception()) is not None:
            why = f"{type(exc).__name__}: {exc}"
            log.error(
                "task %s died after %.1f s (%s); restarting in %.1f s",
                name,
                ran,
                why,
                delay,
                exc_info=exc,
            )
        else:
            why = "returned"
            log.error("task %s returned unexpectedly; restarting in %.1f s", name, delay)
        self.down[name] = why
        if self._on_restart is not None:
            self._on_restart(name)
        return delay

    def _spawn(self, name: str, delay: float) -> asyncio.Task[None]:
        return asyncio.create_task(self._start(name, delay), name=f"{self._name}.{name}")

    async def _start(self, name: str, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        self.down.pop(name, None)
        self._started[name] = time.monotonic()
        await self._children[name]()
