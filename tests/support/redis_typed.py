"""Typed views of redis-py where its annotations fall short of what the tests know."""

from __future__ import annotations

from typing import cast

from redis.asyncio.client import PubSub
from redis.typing import ZSetRangeResponse


def members(reply: ZSetRangeResponse) -> list[bytes | str]:
    """A ZRANGE/ZREVRANGE reply asked for without WITHSCORES: the members alone (redis-py
    types it the same as a reply with scores)."""
    return cast(list[bytes | str], reply)


async def close_pubsub(pubsub: PubSub) -> None:
    """`pubsub.aclose()`, which redis-py leaves unannotated."""
    await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated in redis-py
