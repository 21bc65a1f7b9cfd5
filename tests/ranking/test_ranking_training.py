"""Training on real impressions (issue 26): ranked first pages log what they showed with
the scored features (ranking/impressions.py); `python -m ranking.train --from-database`
labels them by whether the reader engaged within a day and fits the next model."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from core.settings import Settings
from ranking.features import FEATURES
from ranking.impressions import load_sessions
from ranking.model import Model
from tests.support.api import MakeClient, User, follow, post, sign_up
from tests.support.api_server import serve_api
from tests.support.env import run_module
from tests.support.wait import eventually

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def api(ranked_settings: Settings, aiohttp_client: MakeClient) -> Client:
    return await aiohttp_client(serve_api(ranked_settings))


async def ranked_first_page(api: Client, reader: User) -> list[str]:
    resp = await api.get("/v1/feed", params={"algorithm": "ranked"}, headers=reader.auth)
    page = await resp.json()
    assert page["algorithm"] == "ranked", page
    return [p["id"] for p in page["posts"]]


async def logged(db: asyncpg.Pool, reader: User) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM ranking_impressions WHERE reader_id = $1", int(reader.id)
    )
    return count


async def age_by(db: asyncpg.Pool, reader: User, days: int) -> None:
    """As if the impressions had been logged `days` ago; engagements keep their time."""
    await db.execute(
        "UPDATE ranking_impressions SET shown_at = shown_at - make_interval(days => $2) "
        "WHERE reader_id = $1",
        int(reader.id),
        days,
    )


async def test_impressions_are_logged_and_labelled_by_engagement_within_a_day(
    api: Client, db: asyncpg.Pool
) -> None:
    reader, ada, bob = await sign_up(api), await sign_up(api), await sign_up(api)
    for author in (ada, bob):
        await follow(api, reader, author)
    liked, replied, late, ignored = (
        await post(api, ada, "liked"),
        await post(api, bob, "replied to"),
        await post(api, ada, "liked too late"),
        await post(api, bob, "ignored"),
    )
    shown = await ranked_first_page(api, reader)
    assert set(shown) >= {liked, replied, late, ignored}

    async def written() -> bool:  # by the server's supervised task, within a second
        return await logged(db, reader) == len(shown)

    await eventually(written, what="the page's impressions in Postgres")
    row = await db.fetchrow(
        "SELECT page, position, model_version, features FROM ranking_impressions "
        "WHERE reader_id = $1 AND post_id = $2",
        int(reader.id),
        int(shown[0]),
    )
    assert row is not None
    assert row["position"] == 0 and row["model_version"].startswith("lr-")
    assert len(row["features"]) == len(FEATURES)

    for post_id in (liked, late):
        assert (await api.post(f"/v1/posts/{post_id}/like", headers=reader.auth)).status < 300
    await post(api, reader, "a reply", reply_to=replied)
    # Shown three days ago; the like and the reply came an hour later, the late like two
    # days later (outside the one-day window), so only the first two count.
    await age_by(db, reader, 3)
    await db.execute(
        "UPDATE likes SET created_at = created_at - interval '3 days' + interval '1 hour' "
        "WHERE user_id = $1 AND post_id = $2",
        int(reader.id),
        int(liked),
    )
    await db.execute(
        "UPDATE likes SET created_at = created_at - interval '1 day' "
        "WHERE user_id = $1 AND post_id = $2",
        int(reader.id),
        int(late),
    )
    await db.execute(
        "UPDATE posts SET created_at = created_at - interval '3 days' + interval '1 hour' "
        "WHERE author_id = $1 AND reply_to = $2",
        int(reader.id),
        int(replied),
    )
    now = dt.datetime.now(dt.UTC)
    (session,) = [
        s
        for s in await load_sessions(db, now - dt.timedelta(days=5), now)
        if s.reader == int(reader.id)
    ]
    newest_first = sorted(shown, key=int, reverse=True)
    labels = dict(zip(newest_first, session.labels, strict=True))
    assert labels == {liked: 1, replied: 1, late: 0, ignored: 0}

    # Impressions younger than a day have no final label yet: not read.
    await age_by(db, reader, -3)
    assert not [
        s
        for s in await load_sessions(db, now - dt.timedelta(days=5), now)
        if s.reader == int(reader.id)
    ]


async def test_the_training_command_fits_a_model_on_logged_impressions(
    api: Client, db: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    readers = [await sign_up(api) for _ in range(4)]
    authors = [await sign_up(api) for _ in range(3)]
    for reader in readers:
        for author in authors:
            await follow(api, reader, author)
    posts = [await post(api, a, f"post {i}") for i in range(4) for a in authors]
    for reader in readers:
        pages = 0
        for _ in range(6):  # six openings of the feed each: 24 ranked pages
            shown = await ranked_first_page(api, reader)
            pages += 1
            assert set(shown) == set(posts)

        async def written(reader: User = reader, pages: int = pages) -> bool:
            return await logged(db, reader) == pages * len(posts)

        await eventually(written, what="every page's impressions in Postgres")
        await age_by(db, reader, 2)
    # Each reader liked the first author's posts within the hour.
    for reader in readers:
        for post_id in posts[0::3]:
            resp = await api.post(f"/v1/posts/{post_id}/like", headers=reader.auth)
            assert resp.status < 300
    await db.execute(
        "UPDATE likes SET created_at = created_at - interval '2 days' + interval '1 hour' "
        "WHERE user_id = ANY($1::bigint[])",
        [int(r.id) for r in readers],
    )

    out = tmp_path / "model.json"
    done = run_module(settings, "ranking.train", "--from-database", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "held-out AUC" in done.stdout
    model = Model.loads(out.read_bytes())
    assert model.version.startswith("lr-db-") and model.features == list(FEATURES)
    assert len(model.weights) == len(FEATURES)


async def test_too_few_labelled_pages_is_a_clear_refusal(
    settings: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "model.json"
    done = run_module(
        settings, "ranking.train", "--from-database", "--days", "1", "--out", str(out)
    )
    assert done.returncode == 2
    assert "ranked pages with final labels" in done.stderr
    assert not out.exists()
