"""A bounded map that keeps what was used recently, for hot read paths: post bodies a
server process holds for feed pages (server/feed/hydrate.py), tokens already verified
(core/auth.py).

Two generations instead of an LRU list (no bookkeeping on a hit): new entries go to the
young dict; when it is full, it becomes the old one and the previous old one is
dropped; an entry found in the old dict is moved back to the young one. So the most
recently used entries stay, at most `size` are held, and a hit costs one or two dict
lookups. Unlike emptying a full dict, a working set a little over the size does not
turn every use into a miss.
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Recent(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self._half = size // 2
        self._young: dict[K, V] = {}
        self._old: dict[K, V] = {}

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def get(self, key: K) -> V | None:
        value = self._young.get(key)
        if value is None:
            value = self._old.pop(key, None)
            if value is not None:
                self.put(key, value)
        return value

    def put(self, key: K, value: V) -> None:
        if self._half <= 0:
            return
        if len(self._young) >= self._half:
            self._old = self._young
            self._young = {}
        self._young[key] = value
