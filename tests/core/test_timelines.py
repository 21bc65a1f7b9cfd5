"""The home timeline rules of core/timelines.py against the real Redis: what "exists"
means, the sentinel, the cap; and the Lua loader's refusal of an unfilled marker."""

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from core import keys, timelines
from core.lua_files import read_lua

CAP = 5


@pytest.fixture
async def user(redis_client: aioredis.Redis) -> AsyncIterator[int]:
    user_id = random.randrange(10**15, 10**16)
    yield user_id
    await redis_client.delete(keys.timeline(user_id))


async def test_a_missing_timeline_is_never_written(redis_client: aioredis.Redis, user: int) -> None:
    assert await timelines.add_posts(redis_client, user, [1, 2], CAP) == 0
    assert await redis_client.exists(keys.timeline(user)) == 0
    assert await timelines.page(redis_client, user, None, 10) is None


async def test_a_timeline_built_from_all_posts_is_complete(
    redis_client: aioredis.Redis, user: int
) -> None:
    await timelines.build(redis_client, user, [30, 20, 10], CAP)
    assert await timelines.page(redis_client, user, None, 10) == timelines.Page([30, 20, 10], True)
    # Empty history is a built timeline too: the sentinel alone.
    await timelines.drop(redis_client, user)
    await timelines.build(redis_client, user, [], CAP)
    assert await timelines.page(redis_client, user, None, 10) == timelines.Page([], True)


async def test_a_build_merges_with_what_the_timeline_got_meanwhile(
    redis_client: aioredis.Redis, user: int
) -> None:
    """Between a build's read of Postgres and its write, a concurrent build may have
    finished and fan-out written a newer post into it: the write keeps them."""
    await timelines.build(redis_client, user, [20, 10], CAP)
    await timelines.add_posts(redis_client, user, [40], CAP)  # fan-out, meanwhile
    await timelines.build(redis_client, user, [30, 20, 10], CAP)  # the slower build
    assert await timelines.page(redis_client, user, None, 10) == timelines.Page(
        [40, 30, 20, 10], True
    )


async def test_past_the_cap_history_continues_in_postgres(
    redis_client: aioredis.Redis, user: int
) -> None:
    await timelines.build(redis_client, user, [60, 50, 40, 30, 20, 10], CAP)  # cap + 1
    assert await timelines.page(redis_client, user, None, 10) == timelines.Page(
        [60, 50, 40, 30, 20], False
    )


async def test_adds_trim_to_the_cap_and_the_sentinel_goes_first(
    redis_client: aioredis.Redis, user: int
) -> None:
    await timelines.build(redis_client, user, [30, 20, 10], CAP)  # 3 posts + sentinel
    assert await timelines.add_posts(redis_client, user, [40], CAP) == 1
    assert await timelines.add_posts(redis_client, user, [40], CAP) == 0  # a replay
    assert await redis_client.zcard(keys.timeline(user)) == CAP
    assert await timelines.page(redis_client, user, None, 10) == timelines.Page(
        [40, 30, 20, 10], True
    )
    assert await timelines.add_posts(redis_client, user, [50], CAP) == 1
    assert await redis_client.zcard(keys.timeline(user)) == CAP
    # The sentinel was trimmed: older posts than those held may be in Postgres.
    assert await timelines.page(redis_client, user, None, 10) == timelines.Page(
        [50, 40, 30, 20, 10], False
    )
    assert await timelines.page(redis_client, user, 30, 10) == timelines.Page([20, 10], False)


async def test_remove_and_drop(redis_client: aioredis.Redis, user: int) -> None:
    await timelines.build(redis_client, user, [2**63 - 1, 20], CAP)
    assert await timelines.remove_posts(redis_client, user, [20, 99]) == 1
    assert await timelines.page(redis_client, user, None, 10) == timelines.Page([2**63 - 1], True)
    await timelines.drop(redis_client, user)
    assert await timelines.page(redis_client, user, None, 10) is None


def test_a_script_with_an_unfilled_marker_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.lua").write_text("return '@SENTINEL@' .. '@OTHER@'")
    with pytest.raises(ValueError, match="@SENTINEL@"):
        read_lua(tmp_path, "x", {"@OTHER@": "1"})
    assert read_lua(tmp_path, "x", {"@OTHER@": "1", "@SENTINEL@": "0"}) == "return '0' .. '1'"
