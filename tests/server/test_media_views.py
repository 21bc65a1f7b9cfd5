"""A post's media, hydrated wherever the post appears (issue 25): the post itself, the
author's profile, the follower's feed (from Redis and from Postgres), replies, search
and the live stream, each with public URLs the browser fetches without credentials."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image

from core import keys
from core.settings import Settings
from gateway.endpoints import NODE
from tests.support.api import MakeClient, User, follow, sign_up
from tests.support.in_process import in_process_system
from tests.support.live import ws_json
from tests.support.media import jpeg_with_gps, png, processed, upload
from tests.support.wait import eventually

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def system(settings: Settings, aiohttp_client: MakeClient) -> tuple[Client, Client]:
    """The API server, a fan-out worker and a gateway, in this process."""
    running = await in_process_system(settings, aiohttp_client)
    return running.api, running.gw


async def ready_media(api: Client, user: User, data: bytes, content_type: str, alt: str) -> str:
    media_id = await upload(api, user, data, content_type)
    assert (await processed(api, user, media_id))["status"] == "ready"
    resp = await api.patch(f"/v1/media/{media_id}", json={"alt_text": alt}, headers=user.auth)
    assert resp.status == 200, await resp.text()
    return media_id


async def fetch_public(url: str) -> bytes:
    """As a browser's <img>: no credentials, no signature."""
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200, (url, resp.status, await resp.text())
        return await resp.read()


def post_in(page: dict[str, Any], post_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [p for p in page["posts"] if p["id"] == post_id]
    assert found, f"post {post_id} not in {[p['id'] for p in page['posts']]}"
    return found[0]


async def test_media_appear_with_the_post_everywhere_and_are_publicly_readable(
    system: tuple[Client, Client], redis_client: aioredis.Redis
) -> None:
    api, gw = system
    ada, bob = await sign_up(api), await sign_up(api)
    await follow(api, bob, ada)
    await api.get("/v1/feed", headers=bob.auth)  # bob's timeline exists: fan-out writes it
    photo = await ready_media(api, ada, jpeg_with_gps(), "image/jpeg", "a blue square")
    drawing = await ready_media(api, ada, png((800, 200)), "image/png", "a wide strip 🎨")

    ws = await gw.ws_connect("/v1/stream", params={"access_token": bob.token})
    node = gw.app[NODE]

    async def bob_live() -> bool:
        return node.hub.live_connections(int(bob.id)) == 1

    await eventually(bob_live, what="bob live")
    # The author's order, not the upload order.
    resp = await api.post(
        "/v1/posts",
        json={"text": "two pictures", "media_ids": [drawing, photo]},
        headers=ada.auth,
    )
    assert resp.status == 201, await resp.text()
    post_id = (await resp.json())["post_id"]

    event = await ws_json(ws, 20)
    await ws.close()
    assert event["type"] == "post" and event["id"] == post_id
    media = event["data"]["media"]
    assert [m["id"] for m in media] == [drawing, photo]
    assert [m["alt_text"] for m in media] == ["a wide strip 🎨", "a blue square"]
    assert [(m["width"], m["height"]) for m in media] == [(800, 200), (1280, 960)]
    assert all(m["type"] == "image" and m["blurhash"] for m in media)

    # Every other view of the post carries the very same media.
    async def in_timeline() -> bool:
        member = keys.timeline_member(int(post_id))
        return await redis_client.zscore(keys.timeline(int(bob.id)), member) is not None

    await eventually(in_timeline, what="the post in bob's timeline")
    views = {
        "post": await (await api.get(f"/v1/posts/{post_id}", headers=bob.auth)).json(),
        "feed": post_in(await (await api.get("/v1/feed", headers=bob.auth)).json(), post_id),
        "profile": post_in(
            await (await api.get(f"/v1/users/{ada.handle}/posts", headers=bob.auth)).json(),
            post_id,
        ),
    }
    reply = await api.post(
        "/v1/posts", json={"text": "nice", "reply_to": post_id}, headers=bob.auth
    )
    assert reply.status == 201
    found = await api.get("/v1/search", params={"q": "pictures"}, headers=bob.auth)
    views["search"] = post_in(await found.json(), post_id)
    for name, view in views.items():
        assert view["media"] == media, name
    replies = await (await api.get(f"/v1/posts/{post_id}/replies", headers=bob.auth)).json()
    assert [p["media"] for p in replies["posts"]] == [[]]  # a post without media: []

    # Readers fetch the processed image and its preview anonymously; neither carries the
    # photo's GPS position.
    for item in media:
        for url in (item["url"], item["preview_url"]):
            data = await fetch_public(url)
            with Image.open(io.BytesIO(data)) as image:
                assert not image.getexif()
    # Attached media belong to an immutable post: alt text is set before posting.
    resp = await api.patch(f"/v1/media/{photo}", json={"alt_text": "edited"}, headers=ada.auth)
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "media_attached"
    resp = await api.patch(f"/v1/media/{photo}", json={"alt_text": "mine"}, headers=bob.auth)
    assert resp.status == 404


async def test_a_post_read_from_postgres_carries_its_media_too(
    api: Client, redis_client: aioredis.Redis
) -> None:
    """With the post cache gone, bodies are rebuilt from Postgres with their media."""
    ada = await sign_up(api)
    image = await ready_media(api, ada, png((300, 300)), "image/png", "square")
    resp = await api.post("/v1/posts", json={"text": "x", "media_ids": [image]}, headers=ada.auth)
    post_id = (await resp.json())["post_id"]
    await redis_client.delete(keys.post_cache(int(post_id)), keys.post_counters(int(post_id)))
    page = await (await api.get(f"/v1/users/{ada.handle}/posts", headers=ada.auth)).json()
    (item,) = post_in(page, post_id)["media"]
    assert item["id"] == image and item["alt_text"] == "square"
    assert (item["width"], item["height"]) == (300, 300)
