"""Media against the real object store (scripts/stack.py's s3proxy): pre-signed uploads,
processing by the media worker, metadata stripped from the stored bytes, refusals, and
attaching media to posts."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image

from core.object_store import ObjectStore
from core.settings import Settings
from tests.support.api import MakeClient, error_of, sign_up
from tests.support.api_server import serve_api
from tests.support.media import (
    GPS_IFD,
    jpeg_with_gps,
    png,
    processed,
    put,
    start_upload,
    upload,
)

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[ObjectStore]:
    async with ObjectStore.open(settings) as opened:
        yield opened


async def test_upload_process_attach_and_no_metadata_is_stored(
    api: Client, db: asyncpg.Pool, store: ObjectStore
) -> None:
    ada, bob = await sign_up(api), await sign_up(api)
    original = jpeg_with_gps()
    assert b"SecretCam" in original and Image.open(io.BytesIO(original)).getexif().get_ifd(GPS_IFD)
    started = await start_upload(api, ada, "image/jpeg", len(original))
    assert started["upload"]["method"] == "PUT"
    assert started["upload"]["headers"] == {
        "Content-Type": "image/jpeg",
        "Content-Length": str(len(original)),
    }
    assert started["expires_at"].endswith("Z")
    assert (await put(started, original))[0] == 200
    media_id = started["media_id"]

    media = await processed(api, ada, media_id)
    assert media["status"] == "ready", media
    assert (media["width"], media["height"]) == (1280, 960)
    assert media["blurhash"] and len(media["blurhash"]) >= 6
    assert media["url"].endswith(".jpg") and media["preview_url"]

    keys = await db.fetchrow(
        "SELECT upload_key, image_key, preview_key FROM media WHERE id = $1", int(media_id)
    )
    assert keys is not None
    image = await store.get(keys["image_key"], 10_000_000)
    preview = await store.get(keys["preview_key"], 10_000_000)
    for stored in (image, preview):
        assert b"SecretCam" not in stored and b"Exif" not in stored
        with Image.open(io.BytesIO(stored)) as decoded:
            assert not decoded.getexif() and "exif" not in decoded.info
    with Image.open(io.BytesIO(preview)) as small:
        assert small.size == (640, 480)
    assert await store.head(keys["upload_key"]) is None, "the raw upload (with GPS) remains"

    # Not attached yet: only its owner sees it.
    assert (await api.get(f"/v1/media/{media_id}", headers=bob.auth)).status == 404
    resp = await api.patch(
        f"/v1/media/{media_id}", json={"alt_text": "  a blue square  "}, headers=ada.auth
    )
    assert resp.status == 200 and (await resp.json())["alt_text"] == "a blue square"
    resp = await api.post(
        "/v1/posts", json={"text": "look", "media_ids": [media_id]}, headers=ada.auth
    )
    assert resp.status == 201, await resp.text()
    post_id = (await resp.json())["post_id"]
    seen = await (await api.get(f"/v1/media/{media_id}", headers=bob.auth)).json()
    assert seen["post_id"] == post_id and seen["alt_text"] == "a blue square"
    read = await (await api.get(f"/v1/posts/{post_id}", headers=bob.auth)).json()
    assert read["media_ids"] == [media_id]
    # An image is attached once.
    resp = await api.post(
        "/v1/posts", json={"text": "again", "media_ids": [media_id]}, headers=ada.auth
    )
    assert resp.status == 422
    assert (await error_of(resp))["code"] == "media_attached"


@pytest.mark.parametrize(
    ("data", "declared", "reason"),
    [
        (b"%PDF-1.7 definitely not a picture" * 10, "image/png", "not_an_image"),
        (png(), "image/jpeg", "type_mismatch"),
        # 400 megapixels of one colour: a few hundred kilobytes that would decode to 400 MB.
        (png((20_000, 20_000), mode="1"), "image/png", "too_many_pixels"),
        # Over the 16 MP limit but under twice it, where Pillow itself only warns.
        (png((5_000, 4_000), mode="1"), "image/png", "too_many_pixels"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "image/png", "undecodable"),
    ],
    ids=["non-image", "wrong-type", "bomb", "over-pixel-limit", "truncated"],
)
async def test_what_is_not_an_acceptable_image_fails_with_a_reason(
    api: Client, data: bytes, declared: str, reason: str
) -> None:
    ada = await sign_up(api)
    media_id = await upload(api, ada, data, declared)
    media = await processed(api, ada, media_id)
    assert media["status"] == "failed" and media["reason"].startswith(reason + ":"), media
    assert media["url"] is None
    resp = await api.post(
        "/v1/posts", json={"text": "x", "media_ids": [media_id]}, headers=ada.auth
    )
    assert resp.status == 422
    error = await error_of(resp)
    assert (error["code"], error["field"]) == ("media_failed", "media_ids")


async def test_the_store_refuses_another_size_or_type_than_signed(api: Client) -> None:
    ada = await sign_up(api)
    data = png()
    started = await start_upload(api, ada, "image/png", len(data))
    status, text = await put(started, data + b"extra")
    assert status == 403 and "SignatureDoesNotMatch" in text
    status, text = await put(started, data, **{"Content-Type": "image/gif"})
    assert status == 403 and "SignatureDoesNotMatch" in text
    media = await (await api.get(f"/v1/media/{started['media_id']}", headers=ada.auth)).json()
    assert media["status"] == "processing"  # nothing arrived: it waits for the real upload


async def test_an_expired_url_is_refused_and_the_media_fails(
    settings: Settings, aiohttp_client: MakeClient
) -> None:
    api = await aiohttp_client(serve_api(dataclasses.replace(settings, media_upload_ttl_seconds=1)))
    ada = await sign_up(api)
    data = png()
    started = await start_upload(api, ada, "image/png", len(data))
    await asyncio.sleep(2.2)
    status, text = await put(started, data)
    assert status == 403 and "expired" in text
    media = await processed(api, ada, started["media_id"])
    assert media["status"] == "failed" and media["reason"].startswith("upload_missing:")


async def test_upload_requests_are_checked(
    settings: Settings, aiohttp_client: MakeClient, db: asyncpg.Pool
) -> None:
    api = await aiohttp_client(
        serve_api(dataclasses.replace(settings, media_uploads_per_hour=2, media_quota_bytes=3000))
    )
    ada = await sign_up(api)

    async def refused(body: object) -> tuple[int, dict[str, str]]:
        resp = await api.post("/v1/media", json=body, headers=ada.auth)
        return resp.status, await error_of(resp)

    status, error = await refused({"content_type": "image/svg+xml", "size": 10})
    assert (status, error["code"], error["field"]) == (
        422,
        "unsupported_content_type",
        "content_type",
    )
    status, error = await refused({"content_type": "image/png", "size": 8 * 1024 * 1024 + 1})
    assert (status, error["code"]) == (413, "media_too_large")
    status, error = await refused({"content_type": "image/png", "size": "10"})
    assert (status, error["field"]) == (422, "size")
    status, error = await refused({"content_type": "image/png", "size": 2500, "x": 1})
    assert (status, error["code"]) == (422, "unknown_field")

    await start_upload(api, ada, "image/png", 2000)
    status, error = await refused({"content_type": "image/png", "size": 1001})
    assert (status, error["code"]) == (409, "media_quota_exceeded")
    await start_upload(api, ada, "image/png", 1000)
    resp = await api.post(
        "/v1/media", json={"content_type": "image/png", "size": 1}, headers=ada.auth
    )
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    assert (await error_of(resp))["code"] == "rate_limited"
    # Unauthenticated: the one error shape too.
    resp = await api.post("/v1/media", json={"content_type": "image/png", "size": 1})
    assert resp.status == 401


async def test_media_ids_must_be_mine_ready_and_at_most_four(api: Client, db: asyncpg.Pool) -> None:
    ada, bob = await sign_up(api), await sign_up(api)
    bobs = await upload(api, bob, png(), "image/png")
    waiting = (await start_upload(api, ada, "image/png", 100))["media_id"]  # never uploaded
    mine = await upload(api, ada, png(), "image/png")
    assert (await processed(api, ada, mine))["status"] == "ready"

    async def refused(media_ids: list[str]) -> str:
        resp = await api.post(
            "/v1/posts", json={"text": "pics", "media_ids": media_ids}, headers=ada.auth
        )
        assert resp.status == 422, await resp.text()
        error = await error_of(resp)
        assert error["field"] == "media_ids"
        return str(error["code"])

    assert await refused([bobs]) == "media_not_found"
    assert await refused([mine, "123456789"]) == "media_not_found"
    assert await refused([waiting]) == "media_not_ready"
    assert await refused([mine, mine]) == "duplicate_media"
    assert await refused([mine] * 5) == "invalid_field"
    count = await db.fetchval("SELECT count(*) FROM posts WHERE author_id = $1", int(ada.id))
    assert count == 0
    assert await db.fetchval("SELECT post_id FROM media WHERE id = $1", int(mine)) is None


async def test_alt_text_is_the_owners_and_bounded(api: Client) -> None:
    ada, bob = await sign_up(api), await sign_up(api)
    media_id = (await start_upload(api, ada, "image/png", 10))["media_id"]
    resp = await api.patch(f"/v1/media/{media_id}", json={"alt_text": "x" * 1501}, headers=ada.auth)
    assert resp.status == 422 and (await error_of(resp))["code"] == "too_long"
    resp = await api.patch(f"/v1/media/{media_id}", json={"alt_text": "x" * 1500}, headers=ada.auth)
    assert resp.status == 200
    resp = await api.patch(f"/v1/media/{media_id}", json={"alt_text": "mine"}, headers=bob.auth)
    assert resp.status == 404 and (await error_of(resp))["code"] == "media_not_found"
    assert (await api.get("/v1/media/abc", headers=ada.auth)).status == 404


async def test_unattached_media_and_a_deleted_posts_media_leave_the_store(
    api: Client, db: asyncpg.Pool, store: ObjectStore, settings: Settings
) -> None:
    from server.media_worker import MediaWorker

    ada = await sign_up(api)
    kept, orphan, on_post = [await upload(api, ada, png(), "image/png") for _ in range(3)]
    for media_id in (kept, orphan, on_post):
        assert (await processed(api, ada, media_id))["status"] == "ready"
    resp = await api.post("/v1/posts", json={"text": "x", "media_ids": [on_post]}, headers=ada.auth)
    post_id = (await resp.json())["post_id"]
    keys = {
        row["id"]: (row["image_key"], row["preview_key"])
        for row in await db.fetch(
            "SELECT id, image_key, preview_key FROM media WHERE owner_id = $1", int(ada.id)
        )
    }
    # A day later, `orphan` was never attached; and the post goes.
    await db.execute(
        "UPDATE media SET purge_after = now() - interval '1 second' WHERE id = $1", int(orphan)
    )
    assert (await api.delete(f"/v1/posts/{post_id}", headers=ada.auth)).status == 204
    # An attached image is not taken by a post any more once it is to be purged.
    resp = await api.post("/v1/posts", json={"text": "x", "media_ids": [orphan]}, headers=ada.auth)
    assert resp.status == 422 and (await error_of(resp))["code"] == "media_not_found"

    await MediaWorker(settings, db, store).sweep_once()
    for media_id in (orphan, on_post):
        assert (await api.get(f"/v1/media/{media_id}", headers=ada.auth)).status == 404
        for key in keys[int(media_id)]:
            assert await store.head(key) is None, key
    assert (await api.get(f"/v1/media/{kept}", headers=ada.auth)).status == 200
    for key in keys[int(kept)]:
        assert await store.head(key) is not None
