"""Home feed, feed delta, search and notifications."""

from __future__ import annotations

import typing

from aiohttp import web

from core.notification_view import notification_view
from server.context import ctx, user_id
from server.contract.fields import has_bad_characters
from server.contract.queries import DELTA_LIMIT, SEARCH_MAX, FeedQuery
from server.domain import reads
from server.feed.home import FEED, FeedPage, page_body
from server.feed.ranked import CURSOR_KIND, RANKED
from server.handlers.posts import post_list
from server.http import validation as v
from server.http.errors import ApiError, invalid
from server.http.service_json import json, json_bytes

ALGORITHMS: tuple[str, ...] = typing.get_args(FeedQuery.model_fields["algorithm"].annotation)


def _page_response(page: FeedPage, cursor: bool, algorithm: str | None = None) -> web.Response:
    return json_bytes(page_body(page, cursor, algorithm))


async def home(request: web.Request) -> web.Response:
    algorithm = request.query.get("algorithm")
    if algorithm is not None and algorithm not in ALGORITHMS:
        raise ApiError(
            400,
            "invalid_algorithm",
            "algorithm must be one of: " + ", ".join(ALGORITHMS),
            field="algorithm",
        )
    limit = v.limit(request)
    me = user_id(request)
    raw = request.query.get("cursor")
    if algorithm == "ranked" and not (raw and _is_feed_cursor(raw)):
        # A chronological page's cursor (a fallback's) continues chronologically.
        ranked = v.cursor_value(raw, CURSOR_KIND, 2)
        body = await request.app[RANKED].page(me, ranked, limit)
        if body is not None:
            return json_bytes(body)
        algorithm = "chronological"
        raw = None  # the ranked list's position means nothing chronologically
    before = v.cursor_value(raw, "feed")
    page = await request.app[FEED].page(me, before[0] if before else None, limit)
    return _page_response(page, cursor=True, algorithm="chronological" if algorithm else None)


def _is_feed_cursor(raw: str) -> bool:
    try:
        v.cursor_value(raw, "feed")
    except ApiError:
        return False
    return True


async def delta(request: web.Request) -> web.Response:
    raw = request.query.get("since")
    if raw is None:
        raise invalid("since", "since is required (a post id)", "missing_field")
    since = v.parse_id(raw, "since")
    limit = v.limit(request, default=DELTA_LIMIT.default, maximum=DELTA_LIMIT.maximum)
    page = await request.app[FEED].newer(user_id(request), since, limit)
    return _page_response(page, cursor=False)


async def search(request: web.Request) -> web.Response:
    query = (request.query.get("q") or "").strip()
    if not query:
        raise invalid("q", "q is required", "missing_field")
    if len(query) > SEARCH_MAX or has_bad_characters(query, allow_newlines=False):
        raise invalid("q", f"q must be at most {SEARCH_MAX} printable characters")
    limit = v.limit(request)
    before = v.decode_cursor(request, "search")
    c = ctx(request)
    ids = await reads.search_ids(c, query, before[0] if before else v.MAX_ID, limit + 1)
    return json(await post_list(c, ids, limit, "search"))


async def notifications(request: web.Request) -> web.Response:
    c, me = ctx(request), user_id(request)
    limit = v.limit(request)
    before = v.decode_cursor(request, "notifications")
    rows = await reads.notifications(c, me, before[0] if before else v.MAX_ID, limit + 1)
    page = rows[:limit]
    has_more = len(rows) > limit
    return json(
        {
            "notifications": [
                notification_view(
                    notification_id=r["id"],
                    kind=r["kind"],
                    actor_id=r["actor_id"],
                    actor_handle=r["handle"],
                    actor_display_name=r["display_name"],
                    post_id=r["post_id"],
                    created_at=r["created_at"],
                )
                for r in page
            ],
            "next_cursor": v.encode_cursor("notifications", page[-1]["id"]) if has_more else None,
            "has_more": has_more,
        }
    )
