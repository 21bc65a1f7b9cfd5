"""Profiles, profile timelines, follow/unfollow and follower lists."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from core import events, topics
from server import validation as v
from server.context import ctx, user_id
from server.errors import ApiError, not_found
from server.feed import FEED
from server.handlers.posts import post_list
from server.hydrate import iso
from server.service_json import json


async def _user_by_handle(db: asyncpg.Pool, handle: str) -> asyncpg.Record:
    row = None
    if v.HANDLE.fullmatch(handle):
        row = await db.fetchrow(
            "SELECT id, handle, display_name, created_at, follower_count, following_count, "
            "post_count FROM users WHERE lower(handle) = lower($1)",
            handle,
        )
    if row is None:
        raise not_found("user")
    return row


async def profile(request: web.Request) -> web.Response:
    c, me = ctx(request), user_id(request)
    row = await _user_by_handle(c.db, request.match_info["handle"])
    follows = await c.db.fetchval(
        "SELECT true FROM follows WHERE follower_id = $1 AND followee_id = $2", me, row["id"]
    )
    return json(
        {
            "id": str(row["id"]),
            "handle": row["handle"],
            "display_name": row["display_name"],
            "created_at": iso(row["created_at"]),
            "counts": {
                "followers": row["follower_count"],
                "following": row["following_count"],
                "posts": row["post_count"],
            },
            "followed_by_me": bool(follows),
        }
    )


async def profile_posts(request: web.Request) -> web.Response:
    c = ctx(request)
    row = await _user_by_handle(c.db, request.match_info["handle"])
    limit = v.limit(request)
    before = v.decode_cursor(request, "profile")
    rows = await c.reads.fetch(
        "SELECT id FROM posts WHERE author_id = $1 AND deleted_at IS NULL AND id < $2 "
        "ORDER BY id DESC LIMIT $3",
        row["id"],
        before[0] if before else v.MAX_ID,
        limit + 1,
    )
    return json(await post_list(c, [r["id"] for r in rows], limit, "profile"))


async def follow(request: web.Request) -> web.Response:
    return await _set_follow(request, following=True)


async def unfollow(request: web.Request) -> web.Response:
    return await _set_follow(request, following=False)


async def _set_follow(request: web.Request, following: bool) -> web.Response:
    target = v.path_id(request, "user_id")
    c, me = ctx(request), user_id(request)
    if target == me:
        raise ApiError(422, "self_follow", "you cannot follow yourself", field="user_id")
    async with c.db.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT true FROM users WHERE id = $1", target):
            raise not_found("user")
        if following:
            changed = await conn.fetchval(
                "INSERT INTO follows (follower_id, followee_id) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING RETURNING true",
                me,
                target,
            )
        else:
            changed = await conn.fetchval(
                "DELETE FROM follows WHERE follower_id = $1 AND followee_id = $2 RETURNING true",
                me,
                target,
            )
        if changed:
            delta = 1 if following else -1
            # Both users' rows in id order: two people following each other at the same
            # moment would otherwise each lock their own row first and deadlock.
            counts = {
                me: "UPDATE users SET following_count = following_count + $2 WHERE id = $1",
                target: "UPDATE users SET follower_count = follower_count + $2 WHERE id = $1",
            }
            for user in sorted(counts):
                await conn.execute(counts[user], user, delta)
            event: events.Event = (
                events.FollowCreated(follower_id=me, followee_id=target)
                if following
                else events.FollowRemoved(follower_id=me, followee_id=target)
            )
            await c.outbox.enqueue(conn, topics.FOLLOWS, me, event)
            if following:
                await c.outbox.enqueue(
                    conn,
                    topics.ENGAGEMENTS,
                    target,
                    events.Engagement(kind="follow", actor_id=me, recipient_id=target),
                )
        count = await conn.fetchval("SELECT follower_count FROM users WHERE id = $1", target)
    if changed:  # committed: the feed's cache of whom `me` follows is out of date
        await request.app[FEED].following.changed(me)
    return json({"user_id": str(target), "following": following, "followers": count})


async def followers(request: web.Request) -> web.Response:
    return await _people(request, "followee_id", "follower_id", "followers")


async def following(request: web.Request) -> web.Response:
    return await _people(request, "follower_id", "followee_id", "following")


async def _people(request: web.Request, by: str, other: str, kind: str) -> web.Response:
    """Keyset pages over the follows indexes, newest accounts first (ids are time-ordered),
    so a page never shifts when people follow or unfollow meanwhile."""
    c = ctx(request)
    row = await _user_by_handle(c.db, request.match_info["handle"])
    limit = v.limit(request)
    cursor = v.decode_cursor(request, kind)
    rows = await c.db.fetch(
        f"SELECT u.id, u.handle, u.display_name, f.created_at "
        f"  FROM follows f JOIN users u ON u.id = f.{other} "
        f" WHERE f.{by} = $1 AND f.{other} < $2 ORDER BY f.{other} DESC LIMIT $3",
        row["id"],
        cursor[0] if cursor else v.MAX_ID,
        limit + 1,
    )
    page = rows[:limit]
    has_more = len(rows) > limit
    return json(
        {
            "users": [
                {
                    "id": str(r["id"]),
                    "handle": r["handle"],
                    "display_name": r["display_name"],
                    "since": iso(r["created_at"]),
                }
                for r in page
            ],
            "next_cursor": v.encode_cursor(kind, page[-1]["id"]) if has_more else None,
            "has_more": has_more,
        }
    )
