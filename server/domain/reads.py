"""Reads of the home side in Postgres besides the feed itself (server/feed/home.py): full-text
search (from the read replica) and a user's notifications."""

from __future__ import annotations

import asyncpg

from server.context import ServerContext


async def search_ids(c: ServerContext, query: str, before: int, count: int) -> list[int]:
    """Up to `count` ids of live posts matching `query` (websearch syntax), older than
    `before`, newest first."""
    rows = await c.reads.fetch(
        "SELECT id FROM posts WHERE search @@ websearch_to_tsquery('simple', $1) "
        "AND deleted_at IS NULL AND id < $2 ORDER BY id DESC LIMIT $3",
        query,
        before,
        count,
    )
    return [r["id"] for r in rows]


async def notifications(
    c: ServerContext, user: int, before: int, count: int
) -> list[asyncpg.Record]:
    """Up to `count` of a user's notifications older than `before`, newest first, each
    with its actor."""
    rows: list[asyncpg.Record] = await c.db.fetch(
        "SELECT n.id, n.kind, n.post_id, n.created_at, u.id AS actor_id, u.handle, u.display_name "
        "  FROM notifications n JOIN users u ON u.id = n.actor_id "
        " WHERE n.user_id = $1 AND n.id < $2 ORDER BY n.id DESC LIMIT $3",
        user,
        before,
        count,
    )
    return rows
