"""Media: start an upload (a pre-signed PUT straight to the object store: the API never
carries the bytes), read its status, set its alt text.

Processing happens off the request path (server/media_worker.py); the rows' SQL is
server/domain/media.py's. Refusals use the one error shape (server/http/errors.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web

from core.media_urls import public_url
from core.object_store import ObjectStore
from core.resources import DB
from core.service import SETTINGS
from core.supervision import SUPERVISOR, Child
from server.context import ctx, user_id
from server.contract.media import CONTENT_TYPES, MediaPatch, NewMedia
from server.domain import media
from server.feed.hydrate import iso
from server.http import validation as v
from server.http.errors import ApiError
from server.http.service_json import json
from server.media_worker import MediaWorker

MEDIA_STORE = web.AppKey("media_store", ObjectStore)


async def media_ctx(app: web.Application) -> AsyncIterator[None]:
    """The object store client (handlers only sign with it) and the media worker, a
    supervised task of this process (server/media_worker.py says why it polls)."""
    async with ObjectStore.open(app[SETTINGS]) as store:
        app[MEDIA_STORE] = store
        worker = MediaWorker(app[SETTINGS], app[DB], store)
        async with app[SUPERVISOR].running(Child("media-worker", worker.run)):
            yield


def upload_key(owner: int, media_id: int, content_type: str) -> str:
    """Where the client's bytes land; never public (the worker deletes it once done)."""
    return f"uploads/{owner}/{media_id}.{CONTENT_TYPES[content_type]}"


def media_json(row: asyncpg.Record, request: web.Request) -> dict[str, Any]:
    settings = request.app[SETTINGS]
    ready = row["status"] == "ready"
    body: dict[str, Any] = {
        "id": str(row["id"]),
        "type": "image",
        "status": row["status"],
        "content_type": row["content_type"],
        "size": row["size"],
        "url": public_url(settings, row["image_key"]) if ready else None,
        "preview_url": (
            public_url(settings, row["preview_key"]) if ready and row["preview_key"] else None
        ),
        "width": row["width"],
        "height": row["height"],
        "blurhash": row["blurhash"],
        "alt_text": row["alt_text"],
        "post_id": str(row["post_id"]) if row["post_id"] is not None else None,
        "created_at": iso(row["created_at"]),
    }
    if row["status"] == "failed":
        body["reason"] = row["reason"]
    return body


def _size(size: int, limit: int) -> int:
    """The declared size within the deployment's limit (a setting, so not in the model)."""
    if size > limit:
        raise ApiError(
            413, "media_too_large", f"size is over the limit of {limit} bytes", field="size"
        )
    return size


async def create_media(request: web.Request) -> web.Response:
    body = await v.read_body(request, NewMedia)
    settings = request.app[SETTINGS]
    content_type = body.content_type
    size = _size(body.size, settings.media_max_bytes)
    c, owner = ctx(request), user_id(request)
    media_id = c.ids.next_id()
    key = upload_key(owner, media_id, content_type)
    ttl = settings.media_upload_ttl_seconds
    expires = datetime.now(UTC) + timedelta(seconds=ttl)
    await media.start_upload(c, owner, media_id, content_type, size, key, expires)
    upload = await request.app[MEDIA_STORE].presign_put(key, content_type, size, ttl)
    return json(
        {
            "media_id": str(media_id),
            "upload": {"url": upload.url, "method": "PUT", "headers": upload.headers},
            "expires_at": iso(expires),
        },
        status=201,
    )


async def get_media(request: web.Request) -> web.Response:
    row = await media.visible(ctx(request), v.path_id(request), user_id(request))
    return json(media_json(row, request))


async def patch_media(request: web.Request) -> web.Response:
    media_id = v.path_id(request)
    alt = (await v.read_body(request, MediaPatch)).alt_text
    row = await media.set_alt_text(ctx(request), media_id, user_id(request), alt)
    return json(media_json(row, request))
