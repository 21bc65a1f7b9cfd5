"""The public JSON shape of a post, built from Postgres rows. Shared by the API server
(hydration) and fan-out (live events), so a post looks the same on every path."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

POST_COLUMNS = """
    p.id, p.author_id, u.handle, u.display_name, p.text, p.created_at, p.reply_to,
    p.repost_of, p.media_ids, p.deleted_at, p.like_count, p.repost_count, p.reply_count
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
    }


def counts(row: asyncpg.Record) -> dict[str, int]:
    return {
        "likes": row["like_count"],
        "reposts": row["repost_count"],
        "replies": row["reply_count"],
    }


def full_post(row: asyncpg.Record) -> dict[str, Any]:
    return {**post_body(row), "counts": counts(row)}


async def fetch_rows(db: asyncpg.Pool | asyncpg.Connection, ids: list[int]) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(SELECT_POSTS, ids)
    return rows
