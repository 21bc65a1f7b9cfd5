"""Fan-out end to end: the API server and the fan-out worker in this process, real
Postgres, Redis and Kafka in between."""

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiokafka import AIOKafkaProducer

from core import events, keys
from core.clients import build_consumer, create_producer
from core.ids import IdGenerator, id_timestamp_ms
from core.settings import Settings
from core.topics import Topics
from fanout import event_handlers
from fanout.app import CONSUMER
from fanout.app import create_app as create_fanout
from fanout.writer import TimelineWriter
from tests.support.api import MakeClient, User, follow, post, sign_up
from tests.support.api_server import serve_api
from tests.support.redis_typed import close_pubsub, members
from tests.support.wait import eventually

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def fanout_settings(settings: Settings) -> Settings:
    # Each test gets its own consumer group starting at the end of the topics, so it
    # does not first replay every event earlier tests produced.
    return dataclasses.replace(
        settings, fanout_group=f"fanout-{uuid.uuid4().hex[:8]}", fanout_offset_reset="latest"
    )


@pytest.fixture
async def system(
    fanout_settings: Settings, aiohttp_client: MakeClient
) -> AsyncIterator[tuple[Client, Client]]:
    api = await aiohttp_client(serve_api(fanout_settings))
    worker = await aiohttp_client(create_fanout(fanout_settings))
    await asyncio.wait_for(worker.app[CONSUMER].assigned.wait(), 30)
    yield api, worker


async def timeline(redis_client: aioredis.Redis, user: User | int) -> list[str]:
    uid = int(user.id) if isinstance(user, User) else user
    reply = await redis_client.zrange(keys.timeline(uid), 0, -1)
    return [str(keys.post_id_from_member(m)) for m in members(reply) if keys.post_id_from_member(m)]


async def go_online(redis_client: aioredis.Redis, user_id: int) -> None:
    """Presence the way gateways write it (gateway/presence.py): a set of nodes, TTL."""
    await redis_client.sadd(keys.presence(user_id), "gateway-test-node")
    await redis_client.expire(keys.presence(user_id), 60)


async def read_feed(api: Client, user: User) -> list[str]:
    body = await (await api.get("/v1/feed", headers=user.auth)).json()
    return [p["id"] for p in body["posts"]]


async def test_post_lands_in_every_followers_timeline_once_and_trims_at_the_cap(
    system: tuple[Client, Client], redis_client: aioredis.Redis, settings: Settings
) -> None:
    api, _ = system
    author = await sign_up(api)
    followers = [await sign_up(api) for _ in range(6)]
    for f in followers:
        await follow(api, f, author)
        await read_feed(api, f)  # a reader's timeline exists from the first read
    # One timeline at the cap (it may grow into the slack), one at cap + slack (the next
    # write trims it back to the cap, oldest entries first).
    at_cap, full = followers[0], followers[1]
    cap, slack = settings.timeline_cap, settings.timeline_trim_slack
    await redis_client.delete(keys.timeline(int(at_cap.id)), keys.timeline(int(full.id)))
    await redis_client.zadd(
        keys.timeline(int(at_cap.id)), {keys.timeline_member(i): 0 for i in range(1, cap + 1)}
    )
    await redis_client.zadd(
        keys.timeline(int(full.id)),
        {keys.timeline_member(i): 0 for i in range(1, cap + slack + 1)},
    )
    post_id = await post(api, author, "to everyone")

    async def everywhere() -> bool:
        return all([post_id in await timeline(redis_client, f) for f in followers])

    await eventually(everywhere, what="post in every timeline")
    for f in followers:
        assert (await timeline(redis_client, f)).count(post_id) == 1
    assert await redis_client.zcard(keys.timeline(int(at_cap.id))) == cap + (1 if slack else 0)
    kept = await timeline(redis_client, full)
    assert len(kept) == cap and kept[-1] == post_id  # oldest first
    assert min(map(int, kept)) == slack + 2  # the oldest slack + 1 went
    assert (await read_feed(api, followers[2]))[0] == post_id


async def test_online_follower_gets_the_post_live_offline_one_with_device_a_push_job(
    system: tuple[Client, Client],
    redis_client: aioredis.Redis,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    api, _ = system
    author, online, offline = await sign_up(api), await sign_up(api), await sign_up(api)
    for f in (online, offline):
        await follow(api, f, author)
        await read_feed(api, f)
    await go_online(redis_client, int(online.id))
    await db.execute(
        "INSERT INTO devices (id, user_id, kind, token) VALUES ($1, $2, 'apns', $3)",
        int(offline.id),
        int(offline.id),
        uuid.uuid4().hex,
    )
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(keys.user_channel(int(online.id)), keys.user_channel(int(offline.id)))
    push = build_consumer(settings, f"t-{uuid.uuid4().hex[:6]}", Topics.for_settings(settings).push)
    await push.start()
    try:
        post_id = await post(api, author, "live!")
        live = None
        async with asyncio.timeout(20):
            while live is None:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message:
                    live = message
        assert live["channel"] == keys.user_channel(int(online.id)).encode()
        body = orjson.loads(live["data"])
        assert body["type"] == "post" and body["id"] == post_id
        assert body["data"]["text"] == "live!" and body["data"]["author"]["id"] == author.id
        jobs: list[events.PushJob] = []
        async with asyncio.timeout(20):
            while not any(j.post_id == int(post_id) for j in jobs):
                batch = await push.getmany(timeout_ms=500)
                jobs += [events.decode(m.value) for ms in batch.values() for m in ms]  # type: ignore
        mine = [j for j in jobs if j.post_id == int(post_id)]
        assert [(j.kind, j.user_id) for j in mine] == [("feed", int(offline.id))]
    finally:
        await push.stop()
        await close_pubsub(pubsub)


async def test_celebrity_post_is_in_no_timeline_but_in_the_feed_and_live_per_author(
    system: tuple[Client, Client], redis_client: aioredis.Redis, db: asyncpg.Pool
) -> None:
    api, _ = system
    star, fan = await sign_up(api), await sign_up(api)
    await follow(api, fan, star)
    await read_feed(api, fan)
    await db.execute("UPDATE users SET fanout_tier = 'pull' WHERE id = $1", int(star.id))
    await asyncio.sleep(5.1)  # tier caches refresh
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(keys.author_channel(int(star.id)))
    try:
        post_id = await post(api, star, "for millions")
        async with asyncio.timeout(20):
            message = None
            while message is None:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        assert orjson.loads(message["data"])["id"] == post_id
    finally:
        await close_pubsub(pubsub)
    assert post_id not in await timeline(redis_client, fan)
    assert (await read_feed(api, fan))[0] == post_id


async def test_delete_is_removed_everywhere_and_sent_live(
    system: tuple[Client, Client], redis_client: aioredis.Redis
) -> None:
    api, _ = system
    author, fans = await sign_up(api), [await sign_up(api) for _ in range(3)]
    for f in fans:
        await follow(api, f, author)
        await read_feed(api, f)
    post_id = await post(api, author, "regret")

    async def in_all() -> bool:
        return all([post_id in await timeline(redis_client, f) for f in fans])

    await eventually(in_all, what="post fanned out")
    await go_online(redis_client, int(fans[0].id))
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(keys.user_channel(int(fans[0].id)))
    try:
        assert (await api.delete(f"/v1/posts/{post_id}", headers=author.auth)).status == 204

        async def gone() -> bool:
            return not any([post_id in await timeline(redis_client, f) for f in fans])

        await eventually(gone, what="post removed from timelines")
        message = None
        async with asyncio.timeout(20):
            while message is None:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        assert orjson.loads(message["data"]) == {"type": "delete", "id": post_id}
    finally:
        await close_pubsub(pubsub)


async def test_follow_backfills_idempotently_and_unfollow_purges(
    system: tuple[Client, Client], redis_client: aioredis.Redis
) -> None:
    api, _ = system
    author, reader = await sign_up(api), await sign_up(api)
    posts = [await post(api, author, f"old {i}") for i in range(3)]
    await read_feed(api, reader)
    await follow(api, reader, author)

    async def backfilled() -> bool:
        return set(posts) <= set(await timeline(redis_client, reader))

    await eventually(backfilled, what="backfill")
    await api.delete(f"/v1/users/{author.id}/follow", headers=reader.auth)

    async def purged() -> bool:
        return not set(posts) & set(await timeline(redis_client, reader))

    await eventually(purged, what="purge after unfollow")
    await follow(api, reader, author)
    await follow(api, reader, author)
    await eventually(backfilled, what="backfill after re-follow")
    assert sorted(await timeline(redis_client, reader)) == sorted(posts)


async def test_engagement_becomes_a_notification_live_or_pushed(
    system: tuple[Client, Client], redis_client: aioredis.Redis, db: asyncpg.Pool
) -> None:
    api, _ = system
    author, fan = await sign_up(api), await sign_up(api)
    post_id = await post(api, author, "likeable")
    await go_online(redis_client, int(author.id))
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(keys.user_channel(int(author.id)))
    try:
        await api.post(f"/v1/posts/{post_id}/like", headers=fan.auth)
        await follow(api, fan, author)
        kinds: list[str] = []
        async with asyncio.timeout(20):
            while len(kinds) < 2:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message:
                    body = orjson.loads(message["data"])
                    assert body["type"] == "notification"
                    assert body["data"]["actor"]["handle"] == fan.handle
                    kinds.append(body["data"]["kind"])
        assert sorted(kinds) == ["follow", "like"]
    finally:
        await close_pubsub(pubsub)
    listed = await (await api.get("/v1/notifications", headers=author.auth)).json()
    assert sorted(n["kind"] for n in listed["notifications"]) == ["follow", "like"]
    # A replayed engagement event does not notify twice.
    assert (
        await db.fetchval("SELECT count(*) FROM notifications WHERE user_id = $1", int(author.id))
        == 2
    )


async def test_malformed_event_goes_to_dead_letters_and_the_consumer_goes_on(
    system: tuple[Client, Client], redis_client: aioredis.Redis, settings: Settings
) -> None:
    api, _ = system
    topics = Topics.for_settings(settings)
    producer: AIOKafkaProducer = await create_producer(settings)
    marker = uuid.uuid4().hex.encode()
    try:
        await producer.send_and_wait(
            topics.posts, b'{"type": "post.created", "v": 1, "x": "' + marker + b'"}', key=b"1"
        )
    finally:
        await producer.stop()
    author, reader = await sign_up(api), await sign_up(api)
    await follow(api, reader, author)
    await read_feed(api, reader)
    post_id = await post(api, author, "after the poison")

    async def delivered() -> bool:
        return post_id in await timeline(redis_client, reader)

    await eventually(delivered, what="fan-out after a poison event")
    dead = build_consumer(settings, f"t-{uuid.uuid4().hex[:6]}", topics.dead_letters)
    await dead.start()
    try:
        found = None
        async with asyncio.timeout(20):
            while found is None:
                batch = await dead.getmany(timeout_ms=500)
                found = next((m for ms in batch.values() for m in ms if marker in m.value), None)
        headers = dict(found.headers)
        assert b"missing field" in headers["reason"]
        assert headers["source"].startswith(topics.posts.encode())
    finally:
        await dead.stop()


async def test_inactive_followers_are_skipped_and_rebuilt_when_they_return(
    system: tuple[Client, Client],
    redis_client: aioredis.Redis,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    api, _ = system
    author, active, dormant = await sign_up(api), await sign_up(api), await sign_up(api)
    for f in (active, dormant):
        await follow(api, f, author)
        await read_feed(api, f)
    await db.execute(
        "UPDATE users SET last_active_at = now() - make_interval(days => $2) WHERE id = $1",
        int(dormant.id),
        settings.fanout_active_days + 1,
    )
    post_id = await post(api, author, "while you were away")

    async def reached_active() -> bool:
        return post_id in await timeline(redis_client, active)

    await eventually(reached_active, what="fan-out to the active follower")
    assert post_id not in await timeline(redis_client, dormant)
    resp = await api.post(
        "/v1/sessions", json={"handle": dormant.handle, "password": "correct horse"}
    )
    assert resp.status == 200
    assert await redis_client.exists(keys.timeline(int(dormant.id))) == 0
    assert (await read_feed(api, dormant))[0] == post_id


async def test_events_of_one_key_apply_in_order_within_a_kafka_batch(
    system: tuple[Client, Client],
    redis_client: aioredis.Redis,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    """Small authors' posts are delivered together ahead of the rest of their batch; a
    delete after its create, and an unfollow after its follow, must still come after.
    The database is left as if each pair raced (post live, no follow row), so only the
    order the worker applies them in decides the outcome."""
    api, _ = system
    author, reader, followee, marker = [await sign_up(api) for _ in range(4)]
    await follow(api, reader, author)
    await read_feed(api, reader)
    old_posts = [await post(api, followee, f"old {i}") for i in range(2)]
    marker_post = await post(api, marker, "marker")
    post_id = IdGenerator(1016).next_id()
    await db.execute(
        "INSERT INTO posts (id, author_id, text) VALUES ($1, $2, 'racing')",
        post_id,
        int(author.id),
    )
    reader_id, created_at = int(reader.id), id_timestamp_ms(post_id)
    await go_online(redis_client, reader_id)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(keys.user_channel(reader_id))
    topics = Topics.for_settings(settings)
    producer = await create_producer(settings)
    try:
        sent: list[tuple[str, str, events.Event]] = [
            (topics.posts, author.id, events.PostCreated(post_id, int(author.id), created_at)),
            (topics.posts, author.id, events.PostDeleted(post_id, int(author.id))),
            (topics.follows, reader.id, events.FollowCreated(reader_id, int(followee.id))),
            (topics.follows, reader.id, events.FollowRemoved(reader_id, int(followee.id))),
            (topics.follows, reader.id, events.FollowCreated(reader_id, int(marker.id))),
        ]
        for topic, key, event in sent:  # one flush: they share Kafka batches
            await producer.send(topic, events.encode(event), key=key.encode())
        await producer.flush()
        live: list[dict[str, str]] = []
        async with asyncio.timeout(20):
            while not live or live[-1]["type"] != "delete":
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message:
                    live.append(orjson.loads(message["data"]))
        assert [(m["type"], m["id"]) for m in live] == [
            ("post", str(post_id)),
            ("delete", str(post_id)),
        ]
    finally:
        await producer.stop()
        await close_pubsub(pubsub)

    async def marker_backfilled() -> bool:  # the follows before it on its key are done
        return marker_post in await timeline(redis_client, reader)

    await eventually(marker_backfilled, what="backfill after the unfollow")
    in_timeline = await timeline(redis_client, reader)
    assert str(post_id) not in in_timeline
    assert not set(old_posts) & set(in_timeline)


async def test_writer_trims_to_the_cap_and_a_replay_changes_nothing(
    redis_client: aioredis.Redis,
) -> None:
    writer = TimelineWriter(redis_client, cap=5)
    at_cap, over_cap, short, missing = users = [9_000_001, 9_000_002, 9_000_003, 9_000_004]
    for user, count in ((at_cap, 5), (over_cap, 7), (short, 2)):  # over: the cap was lowered
        await redis_client.zadd(
            keys.timeline(user), {keys.timeline_member(i): 0 for i in range(1, count + 1)}
        )

    async def contents() -> list[list[int]]:
        return [
            [
                keys.post_id_from_member(m)
                for m in members(await redis_client.zrange(keys.timeline(u), 0, -1))
            ]
            for u in users
        ]

    payload = events.live_post({"id": "100"})
    assert (await writer.add(100, payload, users)).written == 3
    expected = [[2, 3, 4, 5, 100], [4, 5, 6, 7, 100], [1, 2, 100], []]
    assert await contents() == expected
    assert (await writer.add(100, payload, users)).written == 0
    assert await contents() == expected
    # Small authors' posts, pipelined, with the authors' own timelines. Only offline
    # followers with a device come back (as push candidates), on a replay too.
    for _ in range(2):
        results = await writer.add_many(
            [(101, payload, [at_cap, missing], {missing}), (102, payload, [over_cap], set())],
            [(short, 102)],
        )
    assert [r.written for r in results] == [0, 0]  # the second round was a replay
    assert [r.offline for r in results] == [[missing], []]
    assert await contents() == [[3, 4, 5, 100, 101], [5, 6, 7, 100, 102], [1, 2, 100, 102], []]


async def test_a_failed_group_of_small_posts_sends_the_groups_after_it_one_by_one_too(
    system: tuple[Client, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis back between two groups: the second must not be delivered ahead of the
    first's posts, which go the slower one-by-one way. A client that saw an author's newer
    post live resumes after it, past the older one it never got."""
    api, worker = system
    author, reader = await sign_up(api), await sign_up(api)
    await follow(api, reader, author)
    # Handlers of the worker's dependencies, not its consumer's own: the consumer is
    # delivering these posts meanwhile, through its instance.
    handlers = event_handlers.Handlers(worker.app[CONSUMER]._handlers.d)
    posts = [int(await post(api, author, f"in order {i}")) for i in range(3)]
    created = [events.PostCreated(p, int(author.id), id_timestamp_ms(p)) for p in posts]
    monkeypatch.setattr(event_handlers, "SMALL_GROUP_WRITES", 1)  # a group per post
    tried: list[list[int]] = []
    deliver = handlers._small_group

    async def first_fails(group: list[events.PostCreated]) -> set[int]:
        tried.append([e.post_id for e in group])
        if len(tried) == 1:
            raise ConnectionError("Redis away")
        return await deliver(group)

    monkeypatch.setattr(handlers, "_small_group", first_fails)
    assert await handlers.small_posts(created) == set()  # all three go one by one
    assert tried == [[posts[0]]]
