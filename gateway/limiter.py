"""The per-address limit on new connections: a token bucket per client address, in a
bounded table. It never opens a connection or reads a setting itself."""

from __future__ import annotations

import time
from collections import OrderedDict

# Addresses tracked at most (~150 bytes each). A flood from more addresses than this
# pushes out the ones seen longest ago, one at a time: an address idle that long has
# its bucket full again anyway, so forgetting it forgives nothing. (Emptying the whole
# table instead, as this once did, let anyone with enough addresses reset everyone's
# limit, the flooders' own included.)
MAX_ADDRESSES = 100_000


class RateLimiter:
    """`rate` new connections per second per address, bursts up to `rate`."""

    __slots__ = ("_buckets", "_capacity", "rate")

    def __init__(self, rate: float, capacity: int = MAX_ADDRESSES) -> None:
        self.rate = rate
        self._capacity = capacity
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, address: str) -> bool:
        now = time.monotonic()
        buckets = self._buckets
        found = buckets.pop(address, None)  # re-inserted below: newest last
        tokens, last = found if found is not None else (self.rate, now)
        tokens = min(self.rate, tokens + (now - last) * self.rate)
        allowed = tokens >= 1
        buckets[address] = (tokens - 1 if allowed else tokens, now)
        if len(buckets) > self._capacity:
            buckets.popitem(last=False)
        return allowed
