"""One service process under supervision: started in its own session with its output
copied line by line behind its name, probed for readiness, started again whenever it
exits (restarts.py says when, this module waits and says so), and stopped with SIGTERM,
then SIGKILL after a bound. It never stops another service and never gives up."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .probe import is_ready
from .restarts import Restarts

STOP_GRACE_SECONDS = 15.0
# Output still in the pipe after an exit is copied for at most this long: a grandchild
# holding the pipe open must not hold up a restart.
DRAIN_SECONDS = 2.0
LINE_LIMIT = 1 << 20  # a longer line is dropped (and said so), the copying goes on
# How often a starting process is asked whether it is ready: a probe is one loopback
# request and a look at /proc, cheap next to the start-up it waits for.
PROBE_EVERY = 0.1


def say(message: str) -> None:
    print(f"run: {message}", flush=True)


@dataclass(frozen=True, slots=True)
class Service:
    """What to run: `python -m module *args`, ready when `ready_path` on `port` says so."""

    name: str
    module: str
    port: int
    color: str
    args: tuple[str, ...] = ()
    ready_path: str = "/readyz"

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.ready_path}"


async def stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Sleeps `seconds`, cut short by `stop`; whether `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def before_stop(stop: asyncio.Event, work: Coroutine[Any, Any, object]) -> bool:
    """Runs `work` until it finishes or `stop` is set (then cancels it); whether it
    finished with `stop` still clear."""
    task = asyncio.create_task(work)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        stopping.cancel()
        await asyncio.gather(task, stopping, return_exceptions=True)
    return not stop.is_set()


class Child:
    """A service's current process and its restart history."""

    def __init__(
        self, service: Service, cwd: Path, width: int, restarts: Restarts | None = None
    ) -> None:
        self.service = service
        self.restarts = restarts or Restarts()
        self.proc: asyncio.subprocess.Process | None = None
        self._cwd = cwd
        self._started = 0.0
        self._copier: asyncio.Task[None] | None = None
        label = f"{service.name:<{width}} |"
        colored = sys.stdout.isatty()
        self._prefix = f"\033[{service.color}m{label}\033[0m " if colored else f"{label} "

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def spawn(self, env: dict[str, str]) -> None:
        # Own session: Ctrl-C reaches only the supervisor, which stops children itself.
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.service.module,
            *self.service.args,
            cwd=self._cwd,
            env=env,
            start_new_session=True,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            limit=LINE_LIMIT,
        )
        self._started = time.monotonic()
        assert self.proc.stdout is not None
        self._copier = asyncio.create_task(self._copy(self.proc.stdout), name=f"{self.name} log")

    async def _copy(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # over LINE_LIMIT: the reader has dropped it
                line = f"[a line over {LINE_LIMIT} bytes was dropped]\n".encode()
            if not line:
                return
            text = line.decode(errors="replace")
            sys.stdout.write(self._prefix + (text if text.endswith("\n") else text + "\n"))
            sys.stdout.flush()

    async def ready(self) -> bool:
        if self.proc is None or not self.running:
            return False
        pid, service = self.proc.pid, self.service
        return await asyncio.to_thread(is_ready, pid, service.port, service.ready_url)

    async def keep(self, env: dict[str, str], stop: asyncio.Event, ready_timeout: float) -> None:
        """From a ready first start on: starts the service again whenever it exits, until
        `stop` is set; then stops it."""
        try:
            while self.proc is not None and await before_stop(stop, self.proc.wait()):
                code = await self._reap()
                now = time.monotonic()
                plan = self.restarts.exited(code, now - self._started, now)
                say(plan.describe(self.name))
                if await stopped_within(stop, plan.delay):
                    return
                await self.spawn(env)
                await self._back_up(plan.restart, stop, ready_timeout)
        finally:
            await self.stop()

    async def _back_up(self, restart: int, stop: asyncio.Event, ready_timeout: float) -> None:
        """Returns once the new process is ready (said so), has exited, or `stop` is set."""
        started = time.monotonic()
        warned = False
        while self.running and not stop.is_set():
            if await self.ready():
                assert self.proc is not None
                took = time.monotonic() - started
                say(
                    f"{self.name} restarted (restart {restart}), ready in {took:.1f} s; "
                    f"pid {self.proc.pid}"
                )
                return
            waited = time.monotonic() - started
            if waited > ready_timeout and not warned:
                warned = True
                say(f"{self.name} restarted but not ready after {waited:.0f} s; still waiting")
            await stopped_within(stop, PROBE_EVERY)

    async def _reap(self) -> int:
        """The exit code, once the process and the copying of its output are done."""
        assert self.proc is not None
        code = await self.proc.wait()
        copier, self._copier = self._copier, None
        if copier is not None:
            await asyncio.wait({copier}, timeout=DRAIN_SECONDS)
            copier.cancel()
            (failure,) = await asyncio.gather(copier, return_exceptions=True)
            if isinstance(failure, Exception):
                say(f"copying the output of {self.name} failed: {failure!r}")
        return code

    async def stop(self) -> None:
        """SIGTERM, a bounded wait for the graceful exit, then SIGKILL. Idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_SECONDS)
            except TimeoutError:
                say(f"{self.name} did not stop in {STOP_GRACE_SECONDS:.0f} s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        await self._reap()
