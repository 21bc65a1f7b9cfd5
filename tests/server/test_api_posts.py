import asyncio
import uuid

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from core import keys
from core.ids import IdGenerator
from server.feed.hydrate import bump_counter
from tests.support.api import error_of, follow, post, sign_up

Client = TestClient[web.Request, web.Application]


async def test_create_and_read_a_post(api: Client) -> None:
    user = await sign_up(api)
    resp = await api.post("/v1/posts", json={"text": "  hello world  "}, headers=user.auth)
    assert resp.status == 201
    created = await resp.json()
    assert created["author_id"] == user.id and created["fan_out_status"] == "queued"
    assert created["created_at"].endswith("Z")
    got = await (await api.get(f"/v1/posts/{created['post_id']}", headers=user.auth)).json()
    assert got["text"] == "hello world"
    assert got["author"] == {"id": user.id, "handle": user.handle, "display_name": user.handle}
    assert got["counts"] == {"likes": 0, "reposts": 0, "replies": 0}
    assert got["reply_to"] is None and got["media_ids"] == []


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("e\u0301te\u0301", "été"),  # combining accents are normalised (NFC)
        ("😀" * 280, "😀" * 280),  # 280 emoji are 280 characters
        ("مرحبا بالعالم", "مرحبا بالعالم"),  # right-to-left script
        ("line one\r\nline two", "line one\nline two"),
        ("x" * 280, "x" * 280),
        ("\u200bhi\u200b", "\u200bhi\u200b"),  # invisible characters beside visible ones
        ("👩\u200d💻", "👩\u200d💻"),  # an emoji sequence joined by ZWJ (a format char)
    ],
)
async def test_unicode_text_is_accepted_and_normalised(api: Client, text: str, stored: str) -> None:
    user = await sign_up(api)
    post_id = await post(api, user, text)
    got = await (await api.get(f"/v1/posts/{post_id}", headers=user.auth)).json()
    assert got["text"] == stored


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"text": ""}, "empty_text", "text"),
        ({"text": "   \n  "}, "empty_text", "text"),
        ({"text": "\u200b\ufeff\u00ad\u200d\u2063"}, "empty_text", "text"),  # invisible
        ({"text": "\u3000\u2029\u200e\u202e"}, "empty_text", "text"),  # spaces, bidi marks
        ({"text": "x" * 281}, "too_long", "text"),
        ({"text": "😀" * 281}, "too_long", "text"),
        ({"text": "nul\x00byte"}, "invalid_characters", "text"),
        ({"text": "bell\x07"}, "invalid_characters", "text"),
        ({"text": "esc\x1b[31m"}, "invalid_characters", "text"),
        ({"text": 42}, "invalid_field", "text"),
        ({"text": None}, "missing_field", "text"),
        ({}, "missing_field", "text"),
        ({"text": "ok", "reply_to": "abc"}, "invalid_field", "reply_to"),
        ({"text": "ok", "reply_to": "-1"}, "invalid_field", "reply_to"),
        ({"text": "ok", "reply_to": "99999999999999999999"}, "invalid_field", "reply_to"),
        ({"text": "ok", "reply_to": True}, "invalid_field", "reply_to"),
        ({"text": "ok", "reply_to": "123"}, "post_not_found", "reply_to"),
        ({"text": "ok", "media_ids": ["1", "2", "3", "4", "5"]}, "invalid_field", "media_ids"),
        ({"text": "ok", "media_ids": "1"}, "invalid_field", "media_ids"),
        ({"text": "ok", "idempotency_key": "has space"}, "invalid_field", "idempotency_key"),
        ({"text": "ok", "idempotency_key": "k" * 129}, "invalid_field", "idempotency_key"),
        ({"text": "ok", "extra": 1}, "unknown_field", "extra"),
    ],
)
async def test_bad_posts_are_refused_and_nothing_is_stored(
    api: Client, db: asyncpg.Pool, body: dict[str, object], code: str, field: str
) -> None:
    user = await sign_up(api)
    resp = await api.post("/v1/posts", json=body, headers=user.auth)
    assert resp.status == 422
    error = await error_of(resp)
    assert (error["code"], error["field"]) == (code, field)
    assert await db.fetchval("SELECT count(*) FROM posts WHERE author_id = $1", int(user.id)) == 0


async def test_idempotent_retry_returns_the_first_result_and_creates_one_post(
    api: Client, db: asyncpg.Pool
) -> None:
    user = await sign_up(api)
    key = uuid.uuid4().hex
    first = await api.post(
        "/v1/posts", json={"text": "once", "idempotency_key": key}, headers=user.auth
    )
    retry = await api.post(
        "/v1/posts", json={"text": "once"}, headers={**user.auth, "Idempotency-Key": key}
    )
    assert first.status == retry.status == 201
    assert await first.json() == await retry.json()
    # Concurrent retries of one request, as a flaky network produces them.
    other = uuid.uuid4().hex
    responses = await asyncio.gather(
        *(
            api.post(
                "/v1/posts", json={"text": "race", "idempotency_key": other}, headers=user.auth
            )
            for _ in range(5)
        )
    )
    assert len({(await r.json())["post_id"] for r in responses}) == 1
    assert await db.fetchval("SELECT count(*) FROM posts WHERE author_id = $1", int(user.id)) == 2
    # Keys are per user: another user's identical key is a different request.
    someone = await sign_up(api)
    theirs = await api.post(
        "/v1/posts", json={"text": "mine", "idempotency_key": key}, headers=someone.auth
    )
    assert (await theirs.json())["post_id"] != (await first.json())["post_id"]


async def test_rate_limit_answers_429_with_retry_after(api: Client, db: asyncpg.Pool) -> None:
    user = await sign_up(api)
    ids = IdGenerator(1023)
    await db.executemany(
        "INSERT INTO posts (id, author_id, text) VALUES ($1, $2, 'filler')",
        [(ids.next_id(), int(user.id)) for _ in range(300)],
    )
    resp = await api.post("/v1/posts", json={"text": "one too many"}, headers=user.auth)
    assert resp.status == 429
    assert (await error_of(resp))["code"] == "rate_limited"
    retry_after = int(resp.headers["Retry-After"])
    assert 3 * 3600 - 60 <= retry_after <= 3 * 3600
    # Deleting posts does not refill the allowance.
    await db.execute("UPDATE posts SET deleted_at = now() WHERE author_id = $1", int(user.id))
    again = await api.post("/v1/posts", json={"text": "still too many"}, headers=user.auth)
    assert again.status == 429


async def test_only_the_author_deletes_and_a_deleted_post_is_gone(api: Client) -> None:
    author, other = await sign_up(api), await sign_up(api)
    post_id = await post(api, author, "short-lived")
    assert (await api.get(f"/v1/posts/{post_id}", headers=other.auth)).status == 200
    forbidden = await api.delete(f"/v1/posts/{post_id}", headers=other.auth)
    assert forbidden.status == 403 and (await error_of(forbidden))["code"] == "not_author"
    assert (await api.delete(f"/v1/posts/{post_id}", headers=author.auth)).status == 204
    gone = await api.get(f"/v1/posts/{post_id}", headers=other.auth)
    assert gone.status == 404 and (await error_of(gone))["code"] == "post_not_found"
    assert (await api.delete(f"/v1/posts/{post_id}", headers=author.auth)).status == 404
    for bad in ("abc", "0", "-5", "99999999999999999999"):
        assert (await api.get(f"/v1/posts/{bad}", headers=author.auth)).status == 404


async def test_likes_are_idempotent_and_counted(api: Client) -> None:
    author, fan, other = await sign_up(api), await sign_up(api), await sign_up(api)
    post_id = await post(api, author, "like me")
    await api.get(f"/v1/posts/{post_id}", headers=fan.auth)  # warm the cache first
    for _ in range(2):
        resp = await api.post(f"/v1/posts/{post_id}/like", headers=fan.auth)
        assert (await resp.json()) == {"post_id": post_id, "liked": True, "likes": 1}
    await api.post(f"/v1/posts/{post_id}/like", headers=other.auth)
    got = await (await api.get(f"/v1/posts/{post_id}", headers=author.auth)).json()
    assert got["counts"]["likes"] == 2
    for _ in range(2):
        resp = await api.delete(f"/v1/posts/{post_id}/like", headers=fan.auth)
        assert (await resp.json())["likes"] == 1
    missing = await api.post("/v1/posts/12345/like", headers=fan.auth)
    assert missing.status == 404


async def test_cached_counters_follow_likes_and_a_foreign_value_is_dropped(
    api: Client, redis_client: aioredis.Redis
) -> None:
    author, fan = await sign_up(api), await sign_up(api)
    post_id = await post(api, author, "count me")
    await api.get(f"/v1/posts/{post_id}", headers=fan.auth)  # cached: "author,0,0,0"
    counters = keys.post_counters(int(post_id))
    assert await redis_client.get(counters) == f"{author.id},0,0,0".encode()
    await api.post(f"/v1/posts/{post_id}/like", headers=fan.auth)
    assert await redis_client.get(counters) == f"{author.id},1,0,0".encode()  # TTL kept
    assert await redis_client.ttl(counters) > 0
    await redis_client.set(counters, "not,our,format")
    await api.delete(f"/v1/posts/{post_id}/like", headers=fan.auth)
    assert not await redis_client.exists(counters)  # dropped, not trusted
    got = await (await api.get(f"/v1/posts/{post_id}", headers=author.auth)).json()
    assert got["counts"] == {"likes": 0, "reposts": 0, "replies": 0}
    # A read meeting a foreign value (the three-count form of earlier releases among
    # them) reads Postgres instead, and caches ours again.
    for foreign in ("1,2", "0,0,0"):
        await redis_client.set(counters, foreign)
        resp = await api.get(f"/v1/posts/{post_id}", headers=author.auth)
        assert resp.status == 200
        assert (await resp.json())["counts"] == {"likes": 0, "reposts": 0, "replies": 0}
        assert await redis_client.get(counters) == f"{author.id},0,0,0".encode()
    # Deleted: both keys become tombstones, and a like on a tombstone leaves it one.
    await api.delete(f"/v1/posts/{post_id}", headers=author.auth)
    assert await redis_client.get(counters) == b"-"
    assert await redis_client.get(keys.post_cache(int(post_id))) == b"-"
    await bump_counter(redis_client, int(post_id), "likes", 1)
    assert await redis_client.get(counters) == b"-"


async def test_replies_and_reposts_count_and_list(api: Client) -> None:
    author, replier = await sign_up(api), await sign_up(api)
    root = await post(api, author, "root")
    replies = [await post(api, replier, f"reply {i}", reply_to=root) for i in range(3)]
    await post(api, replier, "boost", repost_of=root)
    got = await (await api.get(f"/v1/posts/{root}", headers=author.auth)).json()
    assert got["counts"] == {"likes": 0, "reposts": 1, "replies": 3}
    first = await (await api.get(f"/v1/posts/{root}/replies?limit=2", headers=author.auth)).json()
    assert [p["id"] for p in first["posts"]] == replies[:2] and first["has_more"]
    rest = await (
        await api.get(
            f"/v1/posts/{root}/replies?limit=2&cursor={first['next_cursor']}", headers=author.auth
        )
    ).json()
    assert [p["id"] for p in rest["posts"]] == replies[2:] and not rest["has_more"]


async def test_cursors_are_opaque_and_checked(api: Client) -> None:
    user = await sign_up(api)
    # A search cursor is not a feed cursor.
    for cursor in ("garbage", "djE6c2VhcmNoOjE", "x" * 300, "%00"):
        resp = await api.get("/v1/feed", params={"cursor": cursor}, headers=user.auth)
        assert resp.status == 422, cursor
        assert (await error_of(resp))["code"] == "invalid_cursor"
    for limit in ("0", "101", "-1", "abc", "1e3"):
        resp = await api.get("/v1/feed", params={"limit": limit}, headers=user.auth)
        assert resp.status == 422 and (await error_of(resp))["field"] == "limit"


async def test_follow_unfollow_counts_and_lists(api: Client) -> None:
    star, fans = await sign_up(api), [await sign_up(api) for _ in range(3)]
    for fan in fans:
        await follow(api, fan, star)
        await follow(api, fan, star)  # idempotent
    profile = await (await api.get(f"/v1/users/{star.handle}", headers=fans[0].auth)).json()
    assert profile["counts"]["followers"] == 3 and profile["followed_by_me"] is True
    page = await (
        await api.get(f"/v1/users/{star.handle}/followers?limit=2", headers=star.auth)
    ).json()
    second = await (
        await api.get(
            f"/v1/users/{star.handle}/followers?limit=2&cursor={page['next_cursor']}",
            headers=star.auth,
        )
    ).json()
    listed = [u["id"] for u in page["users"] + second["users"]]
    assert sorted(listed) == sorted(f.id for f in fans) and not second["has_more"]
    resp = await api.delete(f"/v1/users/{star.id}/follow", headers=fans[0].auth)
    assert (await resp.json())["followers"] == 2
    resp = await api.delete(f"/v1/users/{star.id}/follow", headers=fans[0].auth)
    assert (await resp.json())["followers"] == 2
    following = await (
        await api.get(f"/v1/users/{fans[1].handle}/following", headers=star.auth)
    ).json()
    assert [u["id"] for u in following["users"]] == [star.id]
    self_follow = await api.post(f"/v1/users/{star.id}/follow", headers=star.auth)
    assert self_follow.status == 422 and (await error_of(self_follow))["code"] == "self_follow"
    ghost = await api.post("/v1/users/4242424242/follow", headers=star.auth)
    assert ghost.status == 404
    assert (await api.get("/v1/users/no_such_user_9", headers=star.auth)).status == 404
    assert (await api.get("/v1/users/bad%20handle", headers=star.auth)).status == 404


async def test_two_people_following_each_other_at_once_never_deadlock(api: Client) -> None:
    """Each follow updates both users' counts: in opposite orders, two crossing follows
    (or unfollows) locked each other's rows and Postgres aborted one with a 500."""
    a, b = await sign_up(api), await sign_up(api)
    for _ in range(15):
        for method in (api.post, api.delete):
            answers = await asyncio.gather(
                method(f"/v1/users/{b.id}/follow", headers=a.auth),
                method(f"/v1/users/{a.id}/follow", headers=b.auth),
            )
            assert [r.status for r in answers] == [200, 200], [await r.text() for r in answers]
    for user in (a, b):
        profile = await (await api.get(f"/v1/users/{user.handle}", headers=a.auth)).json()
        assert profile["counts"]["followers"] == 0 and profile["counts"]["following"] == 0


async def test_search_finds_words_and_pages(api: Client) -> None:
    user = await sign_up(api)
    word = f"zq{uuid.uuid4().hex[:8]}"
    ids = [await post(api, user, f"about {word} number {i}") for i in range(3)]
    await post(api, user, "unrelated")
    first = await (
        await api.get("/v1/search", params={"q": word.upper(), "limit": "2"}, headers=user.auth)
    ).json()
    rest = await (
        await api.get(
            "/v1/search", params={"q": word, "cursor": first["next_cursor"]}, headers=user.auth
        )
    ).json()
    assert [p["id"] for p in first["posts"] + rest["posts"]] == ids[::-1]
    for bad in ("", "x" * 201, "a\x00b"):
        resp = await api.get("/v1/search", params={"q": bad}, headers=user.auth)
        assert resp.status == 422
    # Search syntax characters are data, never an error.
    odd = await api.get("/v1/search", params={"q": '"unbalanced ( & | ! :*'}, headers=user.auth)
    assert odd.status == 200


async def test_notifications_list_newest_first(api: Client, db: asyncpg.Pool) -> None:
    me, fan = await sign_up(api), await sign_up(api)
    post_id = await post(api, me, "notable")
    ids = IdGenerator(1022)
    rows = [
        (ids.next_id(), int(me.id), kind, int(fan.id), int(post_id) if kind != "follow" else None)
        for kind in ("follow", "like", "reply")
    ]
    # Rows as fan-out writes them (the fan-out service is what creates notifications).
    await db.executemany(
        "INSERT INTO notifications (id, user_id, kind, actor_id, post_id) VALUES ($1,$2,$3,$4,$5)",
        rows,
    )
    page = await (await api.get("/v1/notifications?limit=2", headers=me.auth)).json()
    rest = await (
        await api.get(f"/v1/notifications?cursor={page['next_cursor']}", headers=me.auth)
    ).json()
    kinds = [n["kind"] for n in page["notifications"] + rest["notifications"]]
    assert kinds == ["reply", "like", "follow"]
    assert page["notifications"][0]["actor"]["handle"] == fan.handle
    theirs = await (await api.get("/v1/notifications", headers=fan.auth)).json()
    assert theirs["notifications"] == []
