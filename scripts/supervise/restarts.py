"""When a service that exited is started again, and what is said about it: a doubling
back-off with jitter, started over after a stable run, and a crash loop named as one.

Pure bookkeeping: no processes and no clock of its own (callers pass the time), so it is
tested without waiting. It never gives up: every exit gets a next try."""

from __future__ import annotations

import random
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    first_delay: float = 0.5
    max_delay: float = 30.0
    # A delay is up to this fraction shorter: processes that died together (two gateways
    # losing Redis) do not all come back in the same instant.
    jitter: float = 0.2
    stable_after: float = 60.0  # a process that ran this long starts the back-off over
    loop_exits: int = 5  # this many exits within loop_window is a crash loop
    loop_window: float = 60.0


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do about one exit."""

    restart: int  # the number of the coming restart (1: the first)
    delay: float  # seconds before it
    reason: str  # "exit code 1", "killed by SIGKILL"
    ran_for: float
    recent_exits: int  # exits within the policy's loop_window, this one included
    crash_loop: bool
    window: float

    def describe(self, name: str) -> str:
        if self.crash_loop:
            return (
                f"{name} is crash-looping: {self.recent_exits} exits in {self.window:.0f} s, "
                f"last: {self.reason}; next try in {self.delay:.1f} s (restart {self.restart})"
            )
        return (
            f"{name} exited ({self.reason}) after {self.ran_for:.1f} s; "
            f"restart {self.restart} in {self.delay:.1f} s"
        )


def exit_reason(returncode: int) -> str:
    """A returncode as people say it: asyncio reports death by signal N as -N."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


class Restarts:
    """The restart history of one service."""

    def __init__(
        self, policy: RestartPolicy | None = None, rand: Callable[[], float] = random.random
    ) -> None:
        self.policy = policy or RestartPolicy()
        self.count = 0  # restarts planned so far
        self._rand = rand
        self._streak = 0  # exits since the last stable run
        self._exits: deque[float] = deque()

    def exited(self, returncode: int, ran_for: float, now: float) -> Plan:
        """Records an exit of a process that ran `ran_for` seconds; `now` is monotonic."""
        policy = self.policy
        if ran_for >= policy.stable_after:
            self._streak = 0
        base = min(policy.max_delay, policy.first_delay * 2 ** min(self._streak, 32))
        self._streak += 1
        self.count += 1
        self._exits.append(now)
        while self._exits[0] <= now - policy.loop_window:
            self._exits.popleft()
        return Plan(
            restart=self.count,
            delay=base * (1 - policy.jitter * self._rand()),
            reason=exit_reason(returncode),
            ran_for=ran_for,
            recent_exits=len(self._exits),
            crash_loop=len(self._exits) >= policy.loop_exits,
            window=policy.loop_window,
        )
