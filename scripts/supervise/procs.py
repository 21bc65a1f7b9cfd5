"""The one process runner of scripts/ and tests/ (blocking calls): start a command with its
output in a log file, wait for a readiness check while watching for an early exit (failing
with the end of the log), and stop by pid: SIGTERM, then SIGKILL after a grace period.
scripts/run.py's supervisor (child.py) does the same start, probe and stop with asyncio.

It never stops a process it was not handed, and never by name."""

from __future__ import annotations

import atexit
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

from .probe import answers_ready

__all__ = [
    "Children",
    "ProcError",
    "answers_ready",
    "free_port",
    "running",
    "start",
    "stop",
    "tail_of",
    "wait_ready",
]

Proc = subprocess.Popen[bytes]


class ProcError(RuntimeError):
    """A process exited before it was ready, or was not ready in time."""


def free_port() -> int:
    """A loopback TCP port nobody listens on now (the OS's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether nobody listens on this loopback port now (for fixed port layouts)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def tail_of(path: Path, chars: int = 2000) -> str:
    """The end of a log file, for an error message ("" when there is none)."""
    try:
        return f"(log: {path})\n" + path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def start(
    args: Sequence[str],
    log: Path,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Proc:
    """`args` as a child process, its stdout and stderr appended to `log` (a file, not a
    pipe: a pipe nobody reads blocks the child once full)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            list(args), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )


def wait_ready(
    what: str,
    ready: Callable[[], bool],
    procs: Sequence[subprocess.Popen[bytes]] | Sequence[subprocess.Popen[str]] = (),
    *,
    timeout: float,
    interval: float = 0.1,
    log_tail: Callable[[], str] = lambda: "",
) -> None:
    """Until `ready()` holds; fails when one of `procs` exits first or `timeout` passes,
    with the end of its log (`log_tail`) in the message."""
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            if proc.poll() is not None:
                raise ProcError(f"{what} exited with {proc.returncode}:\n{log_tail()}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise ProcError(f"{what} not ready after {timeout:.0f} s\n{log_tail()}".rstrip())
        time.sleep(interval)


def stop(
    procs: Sequence[Proc],
    grace: float,
    on_kill: Callable[[Proc], None] = lambda proc: None,
) -> None:
    """SIGTERM every running one of `procs` (our own children), wait up to `grace` seconds
    for all of them together, then SIGKILL what is left."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            on_kill(proc)
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def running(
    what: str,
    args: Sequence[str],
    ready: Callable[[], bool],
    log: Path,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float,
    grace: float,
    interval: float = 0.1,
) -> Iterator[Proc]:
    """`args` started, ready, and stopped on the way out (also when it never got ready)."""
    proc = start(args, log, cwd=cwd, env=env)
    try:
        wait_ready(
            what, ready, [proc], timeout=timeout, interval=interval, log_tail=lambda: tail_of(log)
        )
        yield proc
    finally:
        stop([proc], grace)


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Children:
    """Every process one run starts, stopped (by pid: TERM, then KILL) on normal exit, on
    an error, on Ctrl-C and on SIGTERM; those named in `last` after the others (a Redis
    after the gateways that use it, which would otherwise log its loss as theirs)."""

    def __init__(self, last: tuple[str, ...] = ()) -> None:
        self._procs: list[tuple[str, Proc]] = []
        self._stoppers: list[Callable[[], None]] = []
        self._last = last
        self._stopped = False

    def install(self) -> Children:
        atexit.register(self.stop_all)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def popen(self, name: str, args: list[str], **kwargs: object) -> Proc:
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
        self._stop([(n, p) for n, p in self._procs if n not in self._last], grace)
        self._stop([(n, p) for n, p in self._procs if n in self._last], grace)

    def _stop(self, named: list[tuple[str, Proc]], grace: float) -> None:
        names = {proc.pid: name for name, proc in named}

        def on_kill(proc: Proc) -> None:
            _say(f"{names[proc.pid]} (pid {proc.pid}) did not stop; killing it")

        stop([proc for _, proc in named], grace, on_kill)
