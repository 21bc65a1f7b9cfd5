"""Profiles, profile timelines, follow/unfollow and follower lists over HTTP; the SQL is
server/domain/users.py's."""

from __future__ import annotations

from aiohttp import web

from server.context import ctx, user_id
from server.domain import users
from server.feed.home import FEED
from server.feed.hydrate import iso
from server.handlers.posts import post_list
from server.http import validation as v
from server.http.service_json import json


async def profile(request: web.Request) -> web.Response:
    c, me = ctx(request), user_id(request)
    row = await users.by_handle(c.db, request.match_info["handle"])
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
            "followed_by_me": await users.follows(c.db, me, row["id"]),
        }
    )


async def profile_posts(request: web.Request) -> web.Response:
    c = ctx(request)
    row = await users.by_handle(c.db, request.match_info["handle"])
    limit = v.limit(request)
    before = v.decode_cursor(request, "profile")
    ids = await users.post_ids(c, row["id"], before[0] if before else v.MAX_ID, limit + 1)
    return json(await post_list(c, ids, limit, "profile"))


async def follow(request: web.Request) -> web.Response:
    return await _set_follow(request, following=True)


async def unfollow(request: web.Request) -> web.Response:
    return await _set_follow(request, following=False)


async def _set_follow(request: web.Request, following: bool) -> web.Response:
    target = v.path_id(request, "user_id")
    me = user_id(request)
    changed, count = await users.set_follow(ctx(request), me, target, following)
    if changed:  # committed: the feed's cache of whom `me` follows is out of date
        await request.app[FEED].following.changed(me)
    return json({"user_id": str(target), "following": following, "followers": count})


async def followers(request: web.Request) -> web.Response:
    return await _people(request, users.FOLLOWERS, "followers")


async def following(request: web.Request) -> web.Response:
    return await _people(request, users.FOLLOWING, "following")


async def _people(request: web.Request, direction: tuple[str, str], kind: str) -> web.Response:
    c = ctx(request)
    row = await users.by_handle(c.db, request.match_info["handle"])
    limit = v.limit(request)
    cursor = v.decode_cursor(request, kind)
    rows = await users.people(
        c.db, row["id"], direction, cursor[0] if cursor else v.MAX_ID, limit + 1
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
