"""When to try a failed send again: exponential backoff with full jitter, never sooner
than the service's Retry-After, never past the message's own deadline, never forever."""

from __future__ import annotations

import random

BASE_DELAY = 0.5
MAX_DELAY = 60.0
MAX_ATTEMPTS = 8


def next_delay(
    attempt: int,
    retry_after: float | None,
    now: float,
    deadline: float,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait before attempt `attempt + 1`, or None to give up.

    `attempt` counts the attempts made so far (1 after the first failure)."""
    if attempt >= MAX_ATTEMPTS:
        return None
    ceiling = min(MAX_DELAY, BASE_DELAY * 2 ** (attempt - 1))
    # Jitter: workers retrying after the same outage do not return in lockstep.
    delay = (rng or random).uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    if now + delay >= deadline:
        return None
    return delay
