"""Fail fast while Redis cannot be reached: one gate per Redis, shared by the redis-py
connections of a client (core/clients.py) and the own-protocol clients beside it
(core/lean_redis.py). It owns no connection and does no I/O: callers ask it before they
connect or send, and tell it what happened.

Healthy, it costs one attribute read per call. A failed connect or a read timeout trips
it; from then on every caller is refused at once with RedisUnavailable (a redis-py
ConnectionError, so every `except REDIS_ERRORS` fallback works unchanged), except one
probe at a time, let through after a back-off that doubles up to a cap. Any answer from
Redis (the probe's or a late one) closes the gate at once. A connection found dead
(closed by a restart) is not an outage and is not reported here: the caller retries it
once on a fresh connection, and only a failure of that connect trips the gate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger(__name__)

FIRST_BACKOFF = 0.25  # seconds from a trip to the first probe
MAX_BACKOFF = 5.0  # cap on the wait between probes; also the longest recovery lag


class RedisUnavailable(RedisConnectionError):
    """Refused without trying: Redis did not answer lately and another call is probing."""


class RedisGate:
    """`probe_seconds`: how long one probe may take (its connect and its answer) before
    another caller may probe instead; a probe that never reports (cancelled) expires."""

    def __init__(
        self,
        name: str,
        probe_seconds: float,
        first_backoff: float = FIRST_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._clock = clock
        self._probe_seconds = probe_seconds
        self._first = first_backoff
        self._cap = max_backoff
        self.down = False  # read on every call: a plain attribute
        self._since = 0.0
        self._backoff = 0.0
        self._next_probe = 0.0
        self._probe: object | None = None
        self._probe_until = 0.0
        self._refused = 0

    def admit(self, caller: object) -> None:
        """Returns when `caller` may go ahead (Redis healthy, or `caller` is the probe);
        raises RedisUnavailable otherwise. `caller` identifies one attempt (a connection,
        one call) across its connect and send."""
        if not self.down or caller is self._probe:
            return
        now = self._clock()
        if now < self._next_probe or (self._probe is not None and now < self._probe_until):
            self._refused += 1
            raise RedisUnavailable(
                f"{self.name} unavailable (no answer for {now - self._since:.1f} s; "
                f"next probe in {max(self._next_probe - now, 0.0):.1f} s)"
            )
        self._probe = caller
        self._probe_until = now + self._probe_seconds

    def failed(self, caller: object, error: BaseException) -> None:
        """A connect failed or an answer did not come in time. Trips a healthy gate; a
        failed probe doubles the back-off. Failures of calls sent before the trip change
        nothing (they only tell what the trip already said)."""
        now = self._clock()
        if not self.down:
            self.down = True
            self._since = now
            self._backoff = self._first
            self._refused = 0
            log.warning("%s unreachable (%s): failing fast, one probe at a time", self.name, error)
        elif caller is self._probe:
            self._backoff = min(self._backoff * 2, self._cap)
            log.debug("%s probe failed (%s); next in %.2f s", self.name, error, self._backoff)
        else:
            return
        self._probe = None
        self._next_probe = now + self._backoff

    def answered(self) -> None:
        """Redis answered something: the gate opens for everyone at once."""
        if not self.down:
            return
        self.down = False
        self._probe = None
        log.info(
            "%s answers again after %.1f s (%d calls refused meanwhile)",
            self.name,
            self._clock() - self._since,
            self._refused,
        )
