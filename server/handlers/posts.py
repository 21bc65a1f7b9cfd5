"""Posts over HTTP: create, read, delete (author only), replies, likes. The rules and the
SQL are server/domain/posts.py's; here: parse, call, answer, and the caches."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from core import timelines
from core.media_urls import media_base_url
from server.context import ServerContext, ctx, user_id
from server.contract.posts import NewPost
from server.domain import posts
from server.feed.home import FEED
from server.feed.hydrate import REDIS_ERRORS, Hydrator, bump_counter, forget_post
from server.http import validation as v
from server.http.errors import not_found
from server.http.service_json import json

log = logging.getLogger(__name__)


async def create_post(request: web.Request) -> web.Response:
    body = await v.read_body(request, NewPost)
    key = v.idempotency_key(request, body.idempotency_key)
    c, author = ctx(request), user_id(request)
    published = await posts.publish(c, author, body, key)
    if published.post_id is not None:
        await _read_your_writes(c, author, published.post_id)
        request.app[FEED].celebs.created(author, published.post_id)
        if body.reply_to is not None:
            await bump_counter(c.redis, body.reply_to, "replies", 1)
        if body.repost_of is not None:
            await bump_counter(c.redis, body.repost_of, "reposts", 1)
    return web.Response(body=published.response, status=201, content_type="application/json")


async def _read_your_writes(c: ServerContext, author: int, post_id: int) -> None:
    """The author sees their post at once, before fan-out runs (best effort: a missing or
    unreachable timeline is rebuilt from Postgres, which already has the post)."""
    try:
        await timelines.add_posts(c.redis, author, [post_id], c.settings.timeline_cap)
    except REDIS_ERRORS as exc:
        log.warning("author timeline not updated (Redis unavailable): %s", exc)


async def get_post(request: web.Request) -> web.Response:
    post_id = v.path_id(request)
    c = ctx(request)
    found = await Hydrator(c.db, c.redis, media_base_url(c.settings)).posts([post_id])
    if post_id not in found:
        raise not_found("post")
    return json(found[post_id])


async def delete_post(request: web.Request) -> web.Response:
    post_id = v.path_id(request)
    c = ctx(request)
    removed = await posts.remove(c, post_id, user_id(request))
    await forget_post(c.redis, post_id)
    if removed.reply_to is not None:
        await bump_counter(c.redis, removed.reply_to, "replies", -1)
    if removed.repost_of is not None:
        await bump_counter(c.redis, removed.repost_of, "reposts", -1)
    return web.Response(status=204)


async def like(request: web.Request) -> web.Response:
    return await _set_like(request, liked=True)


async def unlike(request: web.Request) -> web.Response:
    return await _set_like(request, liked=False)


async def _set_like(request: web.Request, liked: bool) -> web.Response:
    post_id = v.path_id(request)
    c = ctx(request)
    delta, count = await posts.set_like(c, post_id, user_id(request), liked)
    if delta:
        await bump_counter(c.redis, post_id, "likes", delta)
    return json({"post_id": str(post_id), "liked": liked, "likes": count})


async def replies(request: web.Request) -> web.Response:
    post_id = v.path_id(request)
    limit = v.limit(request)
    after = v.decode_cursor(request, "replies")
    c = ctx(request)
    ids = await posts.reply_ids(c, post_id, after[0] if after else 0, limit + 1)
    return json(await post_list(c, ids, limit, "replies"))


async def post_list(c: ServerContext, ids: list[int], limit: int, kind: str) -> dict[str, Any]:
    """A page of posts in the given order; `ids` holds up to limit + 1 (the +1 says more)."""
    has_more = len(ids) > limit
    page = ids[:limit]
    found = await Hydrator(c.db, c.redis, media_base_url(c.settings)).posts(page)
    return {
        "posts": [found[i] for i in page if i in found],
        "next_cursor": v.encode_cursor(kind, page[-1]) if has_more else None,
        "has_more": has_more,
    }
