"""What Redis caches of a post, shared by the API server (which fills and reads it) and
fan-out (which tombstones deleted posts).

Two keys per post (core/keys.py): its body (the JSON of core/postview.post_body, which
never changes: posts cannot be edited, nor handles renamed) and its counters, one string
"author,likes,reposts,replies". The counters key is the one read on every feed page: it
says who wrote the post (the unfollow filter) and whether it still exists, so a body
held anywhere (Redis, or a server process's memory) is never shown for a deleted post.
A deleted post's two keys hold TOMBSTONE.
"""

from __future__ import annotations

from typing import Any

from core import keys

POST_TTL = 24 * 3600
COUNTER_TTL = 3600
TOMBSTONE = b"-"
COUNTER_NAMES = ("likes", "reposts", "replies")


def encode_counters(author: int, likes: int, reposts: int, replies: int) -> bytes:
    return b"%d,%d,%d,%d" % (author, likes, reposts, replies)


def counter_parts(counters: bytes) -> list[bytes] | None:
    """The four decimal fields of a cached counters value (author first); None when it
    is not ours (a tombstone, or anything else: the caller reads Postgres instead)."""
    parts = counters.split(b",")
    if len(parts) != 4 or not parts[0].isdigit():
        return None
    if not all(p.lstrip(b"-").isdigit() for p in parts[1:]):
        return None
    return parts


def queue_tombstone(pipe: Any, post_id: int) -> None:
    """Queue on a redis-py pipeline (single node or cluster) what marks a deleted post in
    the cache: its counters first, as they are what feed pages read, then its body. Two
    commands, not one MSET: the two keys may live on different cluster nodes."""
    pipe.set(keys.post_counters(post_id), TOMBSTONE, ex=POST_TTL)
    pipe.set(keys.post_cache(post_id), TOMBSTONE, ex=POST_TTL)


async def tombstone(client: Any, post_id: int) -> None:
    """Mark a deleted post in the cache (`client`: a redis-py client, single or cluster)."""
    pipe = client.pipeline(transaction=False)
    queue_tombstone(pipe, post_id)
    await pipe.execute()
