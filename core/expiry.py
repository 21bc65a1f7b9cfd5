"""Lifetimes of cache keys, each cut short by a random share so that keys filled together
do not expire together.

A cache filled in a burst (the first reads after a cold start, a Redis restart, a
benchmark's warm-up) would otherwise expire in the same second one TTL later. Every read
would then miss at once and go to Postgres, and the misses would fill the keys in a
burst again, one TTL on. Measured on the feed at 2 000 reads/s: every user's following
set expired together an hour after the fill, and p99 went to 3.8 s for 18 s while the
server refilled them (scripts/bench/results/feed.md, session 9). With lifetimes spread
over the last SPREAD of the TTL, the same refills come a few per second.
"""

from __future__ import annotations

import random

SPREAD = 0.25  # share of the TTL a key may lose


def spread(ttl: int) -> int:
    """A lifetime between ttl * (1 - SPREAD) and ttl seconds: never longer than `ttl`,
    which callers document as a bound (on staleness, on memory)."""
    return ttl - random.randint(0, int(ttl * SPREAD))  # noqa: S311 - not a secret
