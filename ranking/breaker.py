"""A circuit breaker for the ranker: after FAILURES failures in a row it opens and the
feed is served chronologically without trying; after `cooldown` seconds one request
tries again (half-open) and its success closes it, its failure opens it again."""

from __future__ import annotations

import time


class Breaker:
    def __init__(self, failures: int, cooldown: float) -> None:
        self._limit = failures
        self._cooldown = cooldown
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_at: float | None = None

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self._due() else "open"

    def _due(self) -> bool:
        return self._opened_at is not None and time.monotonic() - self._opened_at >= self._cooldown

    def allow(self) -> bool:
        """May this request try the ranker? When half-open, only one at a time does."""
        if self._opened_at is None:
            return True
        now = time.monotonic()
        # One trial at a time; a trial that never reported (its request was cancelled)
        # stops counting after another cooldown.
        if self._due() and (self._trial_at is None or now - self._trial_at >= self._cooldown):
            self._trial_at = now
            return True
        return False

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_at = None

    def failed(self) -> None:
        self._failures += 1
        if self._trial_at is not None or self._failures >= self._limit:
            self._opened_at = time.monotonic()
        self._trial_at = None
