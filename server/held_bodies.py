"""Post bodies held in this process's memory, so a feed page's bodies need not travel
out of Redis (through its Lua interpreter, which copies each into a string) on every read.

Safe to hold without expiry: a body never changes (core/post_cache.py), and a deleted
post is told by its counters, which every page still reads from Redis.

Bounded by a number of posts, with two generations instead of an LRU list (no
bookkeeping on a hit): new bodies go to the young dict; when it is full, it becomes the
old one and the previous old one is dropped; a body found in the old dict is moved back
to the young one. So the most recently read posts stay, at most `size` are held, and a
hit costs one or two dict lookups.
"""

from __future__ import annotations


class HeldBodies:
    def __init__(self, size: int) -> None:
        self._half = size // 2
        self._young: dict[int, bytes] = {}
        self._old: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def get(self, post_id: int) -> bytes | None:
        body = self._young.get(post_id)
        if body is None:
            body = self._old.pop(post_id, None)
            if body is not None:
                self.put(post_id, body)
        return body

    def put(self, post_id: int, body: bytes) -> None:
        if self._half <= 0:
            return
        if len(self._young) >= self._half:
            self._old = self._young
            self._young = {}
        self._young[post_id] = body
