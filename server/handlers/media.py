"""Media: start an upload (a pre-signed PUT straight to the object store: the API never
carries the bytes), read its status, set its alt text.

Processing happens off the request path (server/media_worker.py); this module only
creates rows and reads them. Refusals use the one error shape (server/errors.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web

from core.object_store import ObjectStore, public_url
from core.resources import DB
from core.service import SETTINGS
from core.supervision import SUPERVISOR, Child
from server import validation as v
from server.context import Conn, ctx, user_id
from server.contract.media import CONTENT_TYPES, MediaPatch, NewMedia
from server.errors import ApiError, not_found
from server.hydrate import iso
from server.media_worker import MediaWorker
from server.service_json import json

MEDIA_STORE = web.AppKey("media_store", ObjectStore)

RATE_WINDOW_SECONDS = 3600
UNATTACHED_SECONDS = 24 * 3600  # media on no post by then are deleted (objects and row)
_LOCK_NAMESPACE = 0x6D65_6469  # "medi": one user's uploads are serialised (rate, quota)

MEDIA_COLUMNS = (
    "m.id, m.owner_id, m.content_type, m.size, m.status, m.reason, m.image_key, "
    "m.preview_key, m.width, m.height, m.blurhash, m.alt_text, m.post_id, m.created_at"
)


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


async def _check_rate_and_quota(conn: Conn, owner: int, size: int, request: web.Request) -> None:
    settings = request.app[SETTINGS]
    recent = await conn.fetch(
        "SELECT created_at FROM media WHERE owner_id = $1 "
        "AND created_at > now() - make_interval(secs => $2) ORDER BY created_at LIMIT $3",
        owner,
        float(RATE_WINDOW_SECONDS),
        settings.media_uploads_per_hour,
    )
    if len(recent) >= settings.media_uploads_per_hour:
        oldest = recent[0]["created_at"].timestamp()
        retry = max(1, math.ceil(oldest + RATE_WINDOW_SECONDS - time.time()))
        raise ApiError(
            429,
            "rate_limited",
            f"at most {settings.media_uploads_per_hour} uploads per hour; retry in {retry} s",
            headers={"Retry-After": str(retry)},
        )
    held = await conn.fetchval(
        "SELECT coalesce(sum(size), 0) FROM media WHERE owner_id = $1 AND status <> 'failed'",
        owner,
    )
    if held + size > settings.media_quota_bytes:
        raise ApiError(
            409,
            "media_quota_exceeded",
            f"your media would pass the quota of {settings.media_quota_bytes} bytes",
        )


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
    async with c.db.acquire() as conn, conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, $2)", _LOCK_NAMESPACE, owner & 0x7FFF_FFFF
        )
        await _check_rate_and_quota(conn, owner, size, request)
        await conn.execute(
            "INSERT INTO media (id, owner_id, content_type, size, upload_expires_at, upload_key, "
            "purge_after) VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))",
            media_id,
            owner,
            content_type,
            size,
            expires,
            key,
            float(UNATTACHED_SECONDS),
        )
    upload = await request.app[MEDIA_STORE].presign_put(key, content_type, size, ttl)
    return json(
        {
            "media_id": str(media_id),
            "upload": {"url": upload.url, "method": "PUT", "headers": upload.headers},
            "expires_at": iso(expires),
        },
        status=201,
    )


async def _visible_row(request: web.Request, media_id: int) -> asyncpg.Record:
    """The owner sees their media in every state; others only once attached to a post
    that is not deleted. Anything else is 404 (not 403: ids are not confirmed)."""
    row = await ctx(request).db.fetchrow(
        f"SELECT {MEDIA_COLUMNS}, p.deleted_at AS post_deleted_at FROM media m "
        "LEFT JOIN posts p ON p.id = m.post_id WHERE m.id = $1",
        media_id,
    )
    if row is None:
        raise not_found("media")
    public = row["post_id"] is not None and row["post_deleted_at"] is None
    if row["owner_id"] != user_id(request) and not public:
        raise not_found("media")
    return row


async def get_media(request: web.Request) -> web.Response:
    row = await _visible_row(request, v.path_id(request))
    return json(media_json(row, request))


async def patch_media(request: web.Request) -> web.Response:
    media_id = v.path_id(request)
    alt = (await v.read_body(request, MediaPatch)).alt_text
    # Attached media are part of an immutable post, whose body (alt text included) is
    # cached for a day and held in servers' memory: alt text is set before posting.
    db = ctx(request).db
    owner = user_id(request)
    row = await db.fetchrow(
        "UPDATE media m SET alt_text = $3 WHERE id = $1 AND owner_id = $2 "
        f"AND post_id IS NULL RETURNING {MEDIA_COLUMNS}",
        media_id,
        owner,
        alt,
    )
    if row is None:
        if await db.fetchval(
            "SELECT 1 FROM media WHERE id = $1 AND owner_id = $2", media_id, owner
        ):
            raise ApiError(
                409, "media_attached", "alt text is set before the media is attached to a post"
            )
        raise not_found("media")
    return json(media_json(row, request))
