"""The one way the bench scripts (and scripts/redis_cluster.py) start a service and wait
for it: poll a readiness check while watching the children for an early exit, then stop
them by pid (SIGTERM, then SIGKILL after a grace period). Blocking calls only.

It never stops a process it was not handed, and never by name.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence

from scripts.bench.common import BenchError
from scripts.supervise.probe import answers_ready

__all__ = ["answers_ready", "free_port", "stop", "wait_ready"]

Proc = subprocess.Popen[bytes]


def free_port() -> int:
    """A loopback TCP port nobody listens on now (the OS's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(
    what: str,
    ready: Callable[[], bool],
    procs: Sequence[Proc] = (),
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
                raise BenchError(f"{what} exited with {proc.returncode}:\n{log_tail()}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not ready after {timeout:.0f} s\n{log_tail()}".rstrip())
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
