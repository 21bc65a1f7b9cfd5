"""The home feed page script (server/feed/lua/feed_page.lua): its call and its two answers, a
whole page when the caches allow, else the first read the general path of server/feed/home.py
goes on from. Timelines themselves, their rules and their other reads and writes are
core/timelines.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core import keys, timelines
from core.lean_redis import Arg, LeanRedis, LeanScript
from core.lua_files import read_lua


@dataclass(frozen=True, slots=True)
class FirstRead:
    """The first page of a feed read, and what the rest of the read needs to know."""

    page: timelines.Page | None  # None: the timeline is missing (rebuild it)
    followed: list[int] | None  # the given authors the user follows; None: cache missing


@dataclass(frozen=True, slots=True)
class ReadyPage:
    """A whole feed page, merged and filtered by the page script: its posts' ids and
    checked counters (core/post_cache.py); the bodies are the server's to add."""

    counters: list[bytes]
    ids: list[int]
    has_more: bool


LUA_DIR = Path(__file__).with_name("lua")
FEED_PAGE_SCRIPT = LeanScript(
    read_lua(
        LUA_DIR,
        "feed_page",
        {**timelines.LUA_MARKERS, "@COUNTS@": keys.post_counters(0)[:-1]},
    )
)


def page_call(
    user_id: int, before: int | None, limit: int, authors: list[int], held: list[bytes] | None
) -> tuple[list[Arg], list[Arg]]:
    """The page script's keys and arguments (read_page)."""
    upper = b"+" if before is None else b"(" + keys.timeline_member(before)
    return (
        [keys.timeline(user_id), keys.following(user_id)],
        [user_id, upper, limit, len(authors), *authors, *(held or ())],
    )


async def read_page(
    client: LeanRedis,
    user_id: int,
    before: int | None,
    limit: int,
    authors: list[int],
    held: list[bytes] | None,
) -> ReadyPage | FirstRead:
    """The page below `before` in one round trip when the caches allow (ReadyPage); else
    the timeline's first `limit` + 1 entries below `before` and which of `authors` (the
    pull-tier authors) the user follows, for the general path. `held`: the posts
    of `authors` held by this process (Celebrities.held); None when there are too many
    authors to send (the general path merges them then)."""
    found = await client.run(FEED_PAGE_SCRIPT, *page_call(user_id, before, limit, authors, held))
    if found[0] == 1:
        _, counters, members, has_more = found
        return ReadyPage(counters, list(map(keys.post_id_from_member, members)), bool(has_more))
    _, exists, sentinel, members, cached, flags = found
    page = None
    if exists:
        page = timelines.Page(timelines.real_ids(members), complete=bool(sentinel))
    followed = [a for a, f in zip(authors, flags, strict=True) if f] if cached else None
    return FirstRead(page, followed)
