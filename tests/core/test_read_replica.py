"""The Postgres read replica (DATABASE_READ_URL) against the stack's real streaming
standby (scripts/stack.py's postgres-replica): which reads it serves, that no read is
stale while it lags (replay paused on the standby itself), and that every read still
answers while it is down.

Where a query ran is read from the standby's own pg_stat_statements (the stack preloads
it there), never from our counters alone.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from core import timelines
from core.replica import READS
from core.settings import Settings
from server.feed.home import FOLLOWED_POSTS as FEED_POSTS
from tests.support.api import User, follow, post, sign_up
from tests.support.env import stack
from tests.support.wait import eventually

pytestmark = pytest.mark.slow
Client = TestClient[Any, Any]

# pg_stat_statements keeps a statement without its surrounding whitespace.
FOLLOWED_POSTS = FEED_POSTS.strip()
PROFILE_POSTS = "SELECT id FROM posts WHERE author_id = $1%"
SEARCH = "%websearch_to_tsquery%"
# What else runs on the standby in the test database: the replica monitor and position
# checks, asyncpg's type introspection on new connections, this module's own queries.
NOT_A_READ = ("%pg_last_wal_replay_lsn%", "%pg_catalog%", "%pg_stat_statements%", "%pg_type%")


def as_superuser(url: str) -> str:
    """The same server and database as `postgres` (trust on loopback, as the stack sets
    up): pausing replay and reading every statement's counts need it."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"postgres@{parts.hostname}:{parts.port}"))


@pytest.fixture(scope="module")
def read_url(settings: Settings) -> str:
    # Not a skip: a suite that skips because a server is missing is a failing suite.
    assert settings.database_read_url, (
        "DATABASE_READ_URL is empty: start the stack's replica and export its URL "
        '(python3 scripts/stack.py start; eval "$(python3 scripts/stack.py env)")'
    )
    return settings.database_read_url


@pytest.fixture
async def standby(settings: Settings, read_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection to this run's database on the standby, with
    pg_stat_statements created (on the primary: the standby gets it by replaying)."""
    primary = await asyncpg.connect(as_superuser(settings.database_url))
    try:
        await primary.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        await primary.close()
    conn: asyncpg.Connection | None = None

    async def replayed() -> bool:
        nonlocal conn
        try:
            conn = conn or await asyncpg.connect(as_superuser(read_url))
        except asyncpg.InvalidCatalogNameError:  # this run's database not replayed yet
            return False
        return bool(
            await conn.fetchval(
                "SELECT true FROM pg_extension WHERE extname = 'pg_stat_statements'"
            )
        )

    await eventually(replayed, 30, "pg_stat_statements on the standby")
    assert conn is not None
    try:
        yield conn
    finally:
        await conn.execute("SELECT pg_wal_replay_resume()")  # whatever a test left
        await conn.close()


@asynccontextmanager
async def replay_paused(standby: asyncpg.Connection) -> AsyncIterator[None]:
    await standby.execute("SELECT pg_wal_replay_pause()")
    try:

        async def paused() -> bool:
            state = await standby.fetchval("SELECT pg_get_wal_replay_pause_state()")
            return bool(state == "paused")

        await eventually(paused, 10, "replay paused")
        yield
    finally:
        await standby.execute("SELECT pg_wal_replay_resume()")


async def calls(standby: asyncpg.Connection, pattern: str) -> int:
    """Executions on the standby, in this database, of statements LIKE `pattern`."""
    count = await standby.fetchval(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
        "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND query LIKE $1",
        pattern,
    )
    return int(count)


async def other_reads(standby: asyncpg.Connection) -> int:
    count = await standby.fetchval(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
        "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND NOT query LIKE ANY($1::text[])",
        list(NOT_A_READ),
    )
    return int(count)


async def on_standby(standby: asyncpg.Connection, post_id: str) -> bool:
    found = await standby.fetchval("SELECT true FROM posts WHERE id = $1", int(post_id))
    return bool(found)


async def metric(api: Client, name: str, labels: str = "") -> float:
    text = await (await api.get("/metrics")).text()
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def replica_entry(api: Client) -> str:
    resp = await api.get("/readyz")
    body = await resp.json()
    assert resp.status == 200, body  # never failed by the replica: reads have the primary
    entry: str = body["checks"]["postgres-replica"]
    return entry


async def replica_in_use(api: Client, standby: asyncpg.Connection, post_id: str) -> None:
    """The standby has `post_id` and the server's monitor counts it usable again."""

    async def ready() -> bool:
        return await on_standby(standby, post_id) and api.app[READS].state.usable

    await eventually(ready, 30, "replica caught up and in use")


async def ids_of(api: Client, path: str, user: User) -> list[str]:
    resp = await api.get(path, headers=user.auth)
    assert resp.status == 200, await resp.text()
    return [p["id"] for p in (await resp.json())["posts"]]


async def author_and_reader(api: Client) -> tuple[User, User]:
    author, reader = await sign_up(api), await sign_up(api)
    await follow(api, reader, author)
    return author, reader


async def test_a_rebuild_right_after_a_post_has_it_while_replay_is_paused(
    api: Client, standby: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    author, reader = await author_and_reader(api)
    first = await post(api, author, "before the pause")
    await replica_in_use(api, standby, first)
    async with replay_paused(standby):
        # No fan-out runs here: the reader's timeline gets the post only by the rebuild.
        just_made = await post(api, author, "made while the replica replays nothing")
        assert not await on_standby(standby, just_made), "the replica was not lagging"
        await timelines.drop(redis_client, int(reader.id))
        label = '{source="rebuild"}'
        rebuilds = await metric(api, "feed_timeline_reads_total", label)
        assert await ids_of(api, "/v1/feed", reader) == [just_made, first]
        assert await metric(api, "feed_timeline_reads_total", label) == rebuilds + 1
        assert await ids_of(api, f"/v1/users/{author.handle}/posts", reader) == [just_made, first]


async def test_profile_search_and_rebuilds_are_read_on_the_replica(
    api: Client, standby: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    author, reader = await author_and_reader(api)
    word = f"w{uuid.uuid4().hex[:12]}"
    post_id = await post(api, author, f"findable {word}")
    await replica_in_use(api, standby, post_id)
    profile, search = await calls(standby, PROFILE_POSTS), await calls(standby, SEARCH)
    rebuild = await calls(standby, FOLLOWED_POSTS)
    for _ in range(3):
        assert await ids_of(api, f"/v1/users/{author.handle}/posts", reader) == [post_id]
        assert await ids_of(api, f"/v1/search?q={word}", reader) == [post_id]
    await timelines.drop(redis_client, int(reader.id))
    assert await ids_of(api, "/v1/feed", reader) == [post_id]
    assert await calls(standby, PROFILE_POSTS) == profile + 3
    assert await calls(standby, SEARCH) == search + 3
    assert await calls(standby, FOLLOWED_POSTS) == rebuild + 2  # the build and its catch-up

    # Writes and reads of what one just wrote stay on the primary: the standby runs
    # nothing else for this database meanwhile.
    others = await other_reads(standby)
    resp = await api.post(f"/v1/posts/{post_id}/like", headers=reader.auth)
    assert resp.status == 200, await resp.text()
    resp = await api.get(f"/v1/posts/{post_id}", headers=reader.auth)
    assert (await resp.json())["counts"]["likes"] == 1
    resp = await api.get(f"/v1/users/{author.handle}", headers=reader.auth)
    assert resp.status == 200, await resp.text()
    await post(api, reader, "a write")
    assert await other_reads(standby) == others


async def test_a_lagging_replica_is_skipped_and_its_lag_shown(
    api: Client, standby: asyncpg.Connection
) -> None:
    author, reader = await author_and_reader(api)
    word = f"w{uuid.uuid4().hex[:12]}"
    first = await post(api, author, "before the pause")
    await replica_in_use(api, standby, first)
    async with replay_paused(standby):
        fresh = await post(api, author, f"after the pause {word}")

        async def seen_paused() -> bool:
            return (await replica_entry(api)).startswith("replay paused")

        await eventually(seen_paused, 10, "the monitor to see replay paused")
        assert await metric(api, "feed_db_replica_lag_bytes") > 0

        async def lag_grows() -> bool:
            return await metric(api, "feed_db_replica_lag_seconds") >= 1.0

        await eventually(lag_grows, 10, "the lag in seconds to grow")
        assert await metric(api, "feed_db_replica_up") == 1.0
        skipped = await metric(api, "feed_db_replica_reads_total", '{outcome="behind"}')
        profile, search = await calls(standby, PROFILE_POSTS), await calls(standby, SEARCH)
        # Fresh, from the primary: the standby ran neither query.
        assert await ids_of(api, f"/v1/users/{author.handle}/posts", reader) == [fresh, first]
        assert await ids_of(api, f"/v1/search?q={word}", reader) == [fresh]
        assert (await calls(standby, PROFILE_POSTS), await calls(standby, SEARCH)) == (
            profile,
            search,
        )
        behind = await metric(api, "feed_db_replica_reads_total", '{outcome="behind"}')
        assert behind == skipped + 2

    async def caught_up() -> bool:
        return (await replica_entry(api)).startswith("ok") and (
            await metric(api, "feed_db_replica_lag_bytes") == 0
        )

    await eventually(caught_up, 30, "the replica to catch up")
    assert await ids_of(api, f"/v1/users/{author.handle}/posts", reader) == [fresh, first]
    assert await calls(standby, PROFILE_POSTS) == profile + 1


@pytest.mark.outage
async def test_replica_stopped_and_started_reads_answer_from_the_primary(
    api: Client, settings: Settings, read_url: str, redis_client: aioredis.Redis
) -> None:
    author, reader = await author_and_reader(api)
    word = f"w{uuid.uuid4().hex[:12]}"
    before = await post(api, author, f"before the stop {word}")
    stopped = stack("stop", "postgres-replica")
    assert stopped.returncode == 0, stopped.stderr
    try:
        status = stack("status", "postgres-replica")
        assert status.returncode == 3 and "stopped" in status.stdout, status.stdout
        during = await post(api, author, f"while it is down {word}")
        assert await ids_of(api, f"/v1/users/{author.handle}/posts", reader) == [during, before]
        assert await ids_of(api, f"/v1/search?q={word}", reader) == [during, before]
        await timelines.drop(redis_client, int(reader.id))
        assert await ids_of(api, "/v1/feed", reader) == [during, before]

        async def seen_down() -> bool:
            return (await replica_entry(api)).startswith("down")

        await eventually(seen_down, 10, "the monitor to see the replica down")
        assert await metric(api, "feed_db_replica_up") == 0.0
    finally:
        started = stack("start", "postgres-replica")
        assert started.returncode == 0, started.stderr
    assert "postgres-replica ready" in started.stdout, started.stdout
    status = stack("status", "postgres-replica")
    assert status.returncode == 0 and "running" in status.stdout, status.stdout
    # The slot kept what the primary wrote meanwhile: the standby streams it and is used.
    standby = await asyncpg.connect(read_url)
    try:
        await replica_in_use(api, standby, during)
    finally:
        await standby.close()
    assert await ids_of(api, f"/v1/users/{author.handle}/posts", reader) == [during, before]
    assert await metric(api, "feed_db_replica_up") == 1.0


def unused_port() -> int:
    """Below the ephemeral range: `stack.py start` reserves its ports from that range."""
    import random
    import socket

    while True:
        port = random.randint(20_000, 30_000)
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port


def test_a_fresh_standby_is_cloned_and_cloned_again_when_it_cannot_follow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stack of its own (its own directory and ports): the first start clones the
    primary; a primary whose replication rule and slot are gone (an older stack, a
    dropped slot) is given them back on the next start, and the standby is cloned again
    and streams."""
    import shutil
    import subprocess

    from tests.support.env import ROOT

    # Inside the project, so the postgres OS user can reach it (as it reaches .stack/).
    stack_dir = ROOT / ".stack" / f"test-replica-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("STACK_DIR", str(stack_dir))
    primary_port, replica_port = unused_port(), unused_port()
    monkeypatch.setenv("STACK_PG_PORT", str(primary_port))
    monkeypatch.setenv("STACK_PG_REPLICA_PORT", str(replica_port))
    for name in ("DATABASE_URL", "DATABASE_READ_URL"):
        monkeypatch.delenv(name, raising=False)

    def psql(port: int, sql: str) -> str:
        done = subprocess.run(
            ["psql", "-X", "-tA", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", sql],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout.strip()

    def streams(value: str) -> bool:
        return psql(replica_port, "SELECT max(v) FROM marks") == value

    try:
        started = stack("start", "postgres", "postgres-replica")
        assert started.returncode == 0, started.stdout + started.stderr
        assert "cloning the primary with pg_basebackup (first start)" in started.stdout
        psql(primary_port, "CREATE TABLE marks (v text); INSERT INTO marks VALUES ('one')")
        wait_for(lambda: streams("one"))
        assert psql(replica_port, "SELECT pg_is_in_recovery()") == "t"

        assert stack("stop", "postgres-replica").returncode == 0
        hba = Path(psql(primary_port, "SHOW hba_file"))
        hba.write_text(
            "".join(line for line in hba.read_text().splitlines(True) if "replication" not in line)
        )
        psql(primary_port, "SELECT pg_reload_conf()")
        psql(primary_port, "SELECT pg_drop_replication_slot('feed_stack_replica')")
        psql(primary_port, "INSERT INTO marks VALUES ('two')")

        again = stack("start", "postgres-replica")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "(its replication slot is gone)" in again.stdout
        wait_for(lambda: streams("two"))
        status = stack("status", "postgres", "postgres-replica")
        assert status.returncode == 0, status.stdout
        assert psql(primary_port, "SELECT count(*) FROM pg_stat_replication") == "1"
    finally:
        stopped = stack("stop")
        shutil.rmtree(stack_dir, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr


def wait_for(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.1)
