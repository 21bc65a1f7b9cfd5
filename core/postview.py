"""The public JSON shape of a post, built from Postgres rows. Shared by the API server
(hydration) and fan-out (live events), so a post looks the same on every path.

A post's media are part of it: the same SELECT returns them, as the JSON readers get
(`{id, type, url, preview_url, width, height, blurhash, alt_text}` in the order the
author gave), so a cached body holds them and never needs another read. Posts cannot be
edited and attached media cannot change (PATCH /v1/media refuses attached media), which
is what lets a body be cached for a day and held in a server's memory.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

# $2 is the public base URL of stored media (core/object_store.media_base_url), ending
# in "/". Only ready media attached to this very post: the media_ids array is what the
# author asked for, media.post_id is what the API checked and recorded.
MEDIA_JSON = """
    (SELECT coalesce(json_agg(json_build_object(
        'id', m.id::text, 'type', 'image',
        'url', $2::text || m.image_key,
        'preview_url', $2::text || m.preview_key,
        'width', m.width, 'height', m.height,
        'blurhash', m.blurhash, 'alt_text', m.alt_text
     ) ORDER BY array_position(p.media_ids, m.id)), '[]'::json)
     FROM media m WHERE m.post_id = p.id AND m.status = 'ready') AS media
"""
POST_COLUMNS = f"""
    p.id, p.author_id, u.handle, u.display_name, p.text, p.created_at, p.reply_to,
    p.repost_of, p.media_ids, p.deleted_at, p.like_count, p.repost_count, p.reply_count,
    {MEDIA_JSON}
"""
SELECT_POSTS = (
    f"SELECT {POST_COLUMNS} FROM posts p JOIN users u ON u.id = p.author_id "
    "WHERE p.id = ANY($1::bigint[])"
)


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def post_body(row: asyncpg.Record) -> dict[str, Any]:
    """Everything but counters (those change on every like and are cached apart)."""
    return {
        "id": str(row["id"]),
        "author": {
            "id": str(row["author_id"]),
            "handle": row["handle"],
            "display_name": row["display_name"],
        },
        "text": row["text"],
        "created_at": iso(row["created_at"]),
        "reply_to": None if row["reply_to"] is None else str(row["reply_to"]),
        "repost_of": None if row["repost_of"] is None else str(row["repost_of"]),
        "media_ids": [str(m) for m in row["media_ids"]],
        "media": row["media"],
    }


def counts(row: asyncpg.Record) -> dict[str, int]:
    return {
        "likes": row["like_count"],
        "reposts": row["repost_count"],
        "replies": row["reply_count"],
    }


def full_post(row: asyncpg.Record) -> dict[str, Any]:
    return {**post_body(row), "counts": counts(row)}


async def fetch_rows(
    db: asyncpg.Pool | asyncpg.Connection, ids: list[int], media_base: str
) -> list[asyncpg.Record]:
    """The rows of these posts (deleted ones too: callers tombstone them), their media's
    URLs under `media_base`."""
    rows: list[asyncpg.Record] = await db.fetch(SELECT_POSTS, ids, media_base)
    return rows
