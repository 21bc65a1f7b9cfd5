"""Cache keys filled together must not expire together (core/expiry.py): a following set
or a post's counters filled by a read gets a lifetime of its own, within its bound."""

import redis.asyncio as aioredis

from core import keys
from core.expiry import SPREAD, spread
from core.post_cache import COUNTER_TTL, POST_TTL
from core.settings import Settings
from server.feed.following import FOLLOWING_TTL
from tests.support.api import MakeClient, follow, post, sign_up
from tests.support.api_server import serve_api


def test_a_spread_lifetime_stays_within_its_bound_and_varies() -> None:
    drawn = [spread(3600) for _ in range(1000)]
    assert min(drawn) >= 3600 * (1 - SPREAD) and max(drawn) <= 3600
    assert len(set(drawn)) > 100


def within(ttl: int, bound: int) -> bool:
    return bound * (1 - SPREAD) - 5 <= ttl <= bound


async def test_keys_filled_by_one_read_expire_at_different_times(
    settings: Settings, aiohttp_client: MakeClient, redis_client: aioredis.Redis
) -> None:
    api = await aiohttp_client(serve_api(settings))
    readers = [await sign_up(api) for _ in range(12)]
    author = await sign_up(api)
    posts = [int(await post(api, author, f"post {n}")) for n in range(12)]
    for reader in readers:
        await follow(api, reader, author)
    # The caches as a cold start leaves them: every read below fills them again.
    await redis_client.delete(
        *(keys.post_counters(p) for p in posts),
        *(keys.post_cache(p) for p in posts),
        *(keys.following(int(r.id)) for r in readers),
    )
    for reader in readers:
        resp = await api.get("/v1/feed", params={"limit": "20"}, headers=reader.auth)
        assert resp.status == 200, await resp.text()

    following = [await redis_client.ttl(keys.following(int(r.id))) for r in readers]
    counters = [await redis_client.ttl(keys.post_counters(p)) for p in posts]
    bodies = [await redis_client.ttl(keys.post_cache(p)) for p in posts]
    for ttls, bound in ((following, FOLLOWING_TTL), (counters, COUNTER_TTL), (bodies, POST_TTL)):
        assert all(within(t, bound) for t in ttls), (bound, ttls)
        # Filled within a second or two: without a spread they would differ by as much.
        # 12 draws over 900+ seconds all within 10 s of each other: odds ~1e-20.
        assert max(ttls) - min(ttls) > 10, (bound, ttls)
