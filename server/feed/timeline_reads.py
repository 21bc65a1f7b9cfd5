"""The home feed page script (server/feed/lua/feed_page.lua): its call and its two answers, a
whole page when the caches allow, else the first read the general path of server/feed/home.py
goes on from. Timelines themselves, their rules and their other reads and writes are
core/timelines.py's.

On a Redis Cluster a page's post counters live on every node, not on the reader's: the
script's split form stops after the merge, the counters are read with one call per node
side by side (LeanCluster.mget) and the authors no longer followed are dropped with one
SMISMEMBER on the reader's node: the script's last stages, here in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import keys, timelines
from core.lean_cluster import LeanCluster
from core.lean_redis import Arg, LeanClient, LeanScript
from core.lua_files import read_lua
from core.post_cache import TOMBSTONE, counter_parts
from core.recent import Recent


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


def _page_script(split: bool) -> LeanScript:
    markers = {
        **timelines.LUA_MARKERS,
        "@COUNTS@": keys.post_counters(0)[:-1],
        "@SPLIT@": "true" if split else "false",
    }
    return LeanScript(read_lua(LUA_DIR, "feed_page", markers))


FEED_PAGE_SCRIPT = _page_script(split=False)
FEED_PAGE_SPLIT_SCRIPT = _page_script(split=True)  # on a Redis Cluster


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
    client: LeanClient,
    user_id: int,
    before: int | None,
    limit: int,
    authors: list[int],
    held: list[bytes] | None,
    post_authors: Recent[int, bytes] | None = None,
) -> ReadyPage | FirstRead:
    """The page below `before` in one round trip when the caches allow (ReadyPage); else
    the timeline's first `limit` + 1 entries below `before` and which of `authors` (the
    pull-tier authors) the user follows, for the general path. `held`: the posts
    of `authors` held by this process (Celebrities.held); None when there are too many
    authors to send (the general path merges them then). `post_authors`: on a cluster,
    the authors of posts seen before (a post's author never changes), held by the
    caller: with all of a page's known, its unfollow filter goes with its counters."""
    call = page_call(user_id, before, limit, authors, held)
    if isinstance(client, LeanCluster):
        return await _split_page(client, user_id, limit, authors, call, post_authors)
    found = await client.run(FEED_PAGE_SCRIPT, *call)
    if found[0] == 1:
        _, counters, members, has_more = found
        return ReadyPage(counters, list(map(keys.post_id_from_member, members)), bool(has_more))
    return _first_read(found, authors)


def _first_read(general: list[Any], authors: list[int]) -> FirstRead:
    """The script's {0, ...} answer."""
    _, exists, sentinel, members, cached, flags = general
    page = None
    if exists:
        page = timelines.Page(timelines.real_ids(members), complete=bool(sentinel))
    followed = [a for a, f in zip(authors, flags, strict=True) if f] if cached else None
    return FirstRead(page, followed)


async def _split_page(
    client: LeanCluster,
    user_id: int,
    limit: int,
    authors: list[int],
    call: tuple[list[Arg], list[Arg]],
    post_authors: Recent[int, bytes] | None,
) -> ReadyPage | FirstRead:
    """read_page on a cluster: the script's split form, then its counters and unfollow
    stages (server/feed/lua/feed_page.lua) with the counters read node by node."""
    found = await client.run(FEED_PAGE_SPLIT_SCRIPT, *call)
    if found[0] == 0:
        return _first_read(found, authors)
    if len(found) == 5:  # no pull-tier post: the members are the candidates
        _, candidates, more, sentinel, flags = found
        members = [*candidates, timelines.SENTINEL] if sentinel else candidates
        general: list[Any] = [0, 1, sentinel, members, 1, flags]
    else:
        _, candidates, more, general = found
    ids = [keys.post_id_from_member(m) for m in candidates]
    read = await _counters(client, user_id, ids, post_authors)
    live = None if read is None else _live(read[0], ids, user_id, post_authors)
    if read is None or live is None:
        return _first_read(general, authors)  # a cache to fill: the general path's
    values, followed = read
    kept, others = live
    if others and not all(author in followed for author, _ in others):
        asked = [author for author, _ in others]
        # "0" first: the set always holds it, so a 0 there means it was dropped since
        # the script read it (a follow or unfollow): the general path fills it again.
        cached, *flags = await client.command("SMISMEMBER", keys.following(user_id), b"0", *asked)
        if not cached:
            return _first_read(general, authors)
        followed = dict(zip(asked, flags, strict=True))
    hidden = {at for author, at in others if not followed[author]}
    shown = [j for k, j in enumerate(kept) if k not in hidden]
    if len(shown) < limit and more:
        return _first_read(general, authors)  # more rounds needed
    page = shown[:limit]
    return ReadyPage(
        [values[j] for j in page], [ids[j] for j in page], bool(more) or len(shown) > limit
    )


async def _counters(
    client: LeanCluster, user_id: int, ids: list[int], post_authors: Recent[int, bytes] | None
) -> tuple[list[Any], dict[bytes, int]] | None:
    """The posts' counters, read node by node, and whether the reader follows the
    authors of the posts whose author this process knows (`post_authors`): asked in the
    same write as the reader's node's counters when every author is known. None: the
    following set is gone (the general path fills it)."""
    names = [keys.post_counters(i) for i in ids]
    known = [] if post_authors is None else list(map(post_authors.get, ids))
    reader = b"%d" % user_id
    if not ids or None in known or not known:
        return await client.mget(names), {}
    asked = sorted({a for a in known if a is not None and a != reader})
    if not asked:
        return await client.mget(names), {}
    following: tuple[Arg, ...] = ("SMISMEMBER", keys.following(user_id), b"0", *asked)
    values, flags = await client.mget_beside(names, following)
    if not flags[0]:
        return None
    return values, dict(zip(asked, flags[1:], strict=True))


def _live(
    values: list[Any], ids: list[int], user_id: int, post_authors: Recent[int, bytes] | None
) -> tuple[list[int], list[tuple[bytes, int]]] | None:
    """The positions of the live posts, and (author, position in those) of the posts of
    others than the reader; None when a counter is missing or not ours."""
    kept: list[int] = []
    others: list[tuple[bytes, int]] = []
    reader = b"%d" % user_id
    for j, counter in enumerate(values):
        if counter is None:
            return None
        if counter == TOMBSTONE:
            continue
        parts = counter_parts(counter)
        if parts is None:
            return None
        if post_authors is not None:
            post_authors.put(ids[j], parts[0])
        kept.append(j)
        if parts[0] != reader:
            others.append((parts[0], len(kept) - 1))
    return kept, others
