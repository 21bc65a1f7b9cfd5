"""Media in Postgres: a new upload's row (one user's uploads serialised, the hourly rate
and the storage quota checked in the same transaction), reading one as its viewer may,
and its alt text (before it is attached). The media worker (server/media_worker.py)
owns the rest of a row's life."""

from __future__ import annotations

import math
import time
from datetime import datetime

import asyncpg

from core.settings import Settings
from server.context import Conn, ServerContext
from server.http.errors import ApiError, not_found

RATE_WINDOW_SECONDS = 3600
UNATTACHED_SECONDS = 24 * 3600  # media on no post by then are deleted (objects and row)
_LOCK_NAMESPACE = 0x6D65_6469  # "medi": one user's uploads are serialised (rate, quota)

MEDIA_COLUMNS = (
    "m.id, m.owner_id, m.content_type, m.size, m.status, m.reason, m.image_key, "
    "m.preview_key, m.width, m.height, m.blurhash, m.alt_text, m.post_id, m.created_at"
)


async def start_upload(
    c: ServerContext,
    owner: int,
    media_id: int,
    content_type: str,
    size: int,
    key: str,
    expires: datetime,
) -> None:
    async with c.db.acquire() as conn, conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, $2)", _LOCK_NAMESPACE, owner & 0x7FFF_FFFF
        )
        await _check_rate_and_quota(conn, owner, size, c.settings)
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


async def _check_rate_and_quota(conn: Conn, owner: int, size: int, settings: Settings) -> None:
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


async def visible(c: ServerContext, media_id: int, viewer: int) -> asyncpg.Record:
    """The owner sees their media in every state; others only once attached to a post
    that is not deleted. Anything else is 404 (not 403: ids are not confirmed)."""
    row = await c.db.fetchrow(
        f"SELECT {MEDIA_COLUMNS}, p.deleted_at AS post_deleted_at FROM media m "
        "LEFT JOIN posts p ON p.id = m.post_id WHERE m.id = $1",
        media_id,
    )
    if row is None:
        raise not_found("media")
    public = row["post_id"] is not None and row["post_deleted_at"] is None
    if row["owner_id"] != viewer and not public:
        raise not_found("media")
    return row


async def set_alt_text(c: ServerContext, media_id: int, owner: int, alt: str) -> asyncpg.Record:
    # Attached media are part of an immutable post, whose body (alt text included) is
    # cached for a day and held in servers' memory: alt text is set before posting.
    row = await c.db.fetchrow(
        "UPDATE media m SET alt_text = $3 WHERE id = $1 AND owner_id = $2 "
        f"AND post_id IS NULL RETURNING {MEDIA_COLUMNS}",
        media_id,
        owner,
        alt,
    )
    if row is None:
        if await c.db.fetchval(
            "SELECT 1 FROM media WHERE id = $1 AND owner_id = $2", media_id, owner
        ):
            raise ApiError(
                409, "media_attached", "alt text is set before the media is attached to a post"
            )
        raise not_found("media")
    return row
