"""The ranked feed's candidates (server/feed/ranked.py): the reader's newest timeline
entries and the held recent posts of the pull-tier authors they follow, within the
recency window, as ids, authors, counters and the few facts of a post the model reads
(reply, repost, media: they never change, so each process holds them). No post body is
read or decoded here: a ranked page hydrates only the posts it shows. Posts whose
counters or facts no cache holds are read from Postgres, their columns only, and their
counts serve ranking for COUNTED_SECONDS; the counters' cache in Redis is left to the
reads that hydrate posts (filling it here would cost a Redis write per post for posts
most of which no page will show).

Deleted posts (tombstoned counters) and authors no longer followed are dropped, as the
chronological feed drops them. A missing timeline is not rebuilt here: the caller takes
the chronological feed's general path then (HomeFeed.page rebuilds it).

Redis reads work on a single Redis and on a cluster alike: one script over the reader's
own keys (one hash tag: ranking/lua/candidates.lua) reads the timeline, the following
set and the reader's features (affinity to followees, posts shown lately), then one MGET
reads the candidates' counters (split by slot on a cluster). Both go over the feed's
lean client (core/lean_redis.py, core/lean_cluster.py), as the chronological page's
script does: through redis-py each cost about as much CPU as scoring a hundred posts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import ranking
from core import keys
from core.clients import AnyRedis
from core.ids import id_timestamp_ms
from core.lean_redis import LeanScript
from core.lua_files import read_lua
from core.post_cache import TOMBSTONE
from core.recent import Recent
from core.timelines import SENTINEL
from ranking.scorer import Columns
from server.context import ServerContext
from server.feed.home import CELEB_POSTS_DEPTH, FOLLOWED_AUTHORS_POSTS, MAX_ID, HomeFeed


class Facts(NamedTuple):
    """What ranking reads of a post that never changes (its body does not either)."""

    author: int
    handle: str
    reply: bool
    repost_of: int | None
    media: bool


# A candidate's facts and counts, for posts the caches miss (deleted ones left out).
CANDIDATE_ROWS = """
SELECT p.id, p.author_id, u.handle, p.reply_to IS NOT NULL, p.repost_of,
       coalesce(cardinality(p.media_ids), 0) > 0, p.like_count, p.repost_count, p.reply_count
  FROM posts p JOIN users u ON u.id = p.author_id
 WHERE p.id = ANY($1::bigint[]) AND p.deleted_at IS NULL
"""


class Reader(NamedTuple):
    """What the candidates' read learnt of the reader."""

    followees: set[int]  # whom the reader follows
    affinity: dict[int, float]  # author -> affinity score as kept (ranking/store.py)
    seen: set[int]  # posts shown to the reader lately


LUA_DIR = Path(ranking.__file__).with_name("lua")
Known = tuple[Facts, int, int, int]  # a post's facts, likes, reposts and replies
# How long counts read from Postgres serve again while Redis holds no counters for the
# post: ranking signals, not what a page shows (hydration reads the counters afresh).
COUNTED_SECONDS = 60.0
CLOCK_SKEW_MS = 60_000  # between the servers that made post ids and logged impressions
SPARE_SHARE = 4  # a quarter more timeline entries than candidates are read
ROUNDS = 3  # counter reads at most, when many entries were dropped


@dataclass(frozen=True, slots=True)
class Pool:
    """A reader's candidates, newest first."""

    columns: Columns
    handles: list[str]  # each candidate's author's handle (for reasons)
    engaged: list[int]  # the candidates someone liked or reposted
    reader: Reader
    known: dict[int, Known] | None = None  # facts and counts by id (the general path: none)


class CandidateReader:
    def __init__(self, c: ServerContext, feed: HomeFeed, held: int) -> None:
        self._c = c
        self._redis: AnyRedis = c.redis
        self._feed = feed
        self.facts: Recent[int, Facts] = Recent(held)
        # Counts read from Postgres when Redis had none: (when, likes, reposts, replies).
        self.counted: Recent[int, tuple[float, int, int, int]] = Recent(held)
        self._script = LeanScript(read_lua(LUA_DIR, "candidates"))

    async def read(self, user: int, n: int, oldest: int) -> Pool | None:
        """Up to `n` candidates with ids from `oldest` up; None when the reader's timeline
        is missing (the general path rebuilds it)."""
        # More than `n`: entries of deleted posts and unfollowed authors are dropped below.
        depth = n + n // SPARE_SHARE + 1
        names = [
            keys.timeline(user),
            keys.following(user),
            keys.ranking_affinity(user),
            keys.ranking_seen(user),
        ]
        since = id_timestamp_ms(oldest) - CLOCK_SKEW_MS if oldest else 0
        members, following, scores, shown = await self._own_keys(names, [depth, since])
        if not members:  # a timeline that exists holds at least its sentinel or a post
            return None
        followees = {int(m) for m in following}
        affinity = {int(m): float(v) for m, v in zip(following, scores, strict=True) if v}
        if followees:
            followees.discard(0)  # the cache's "filled" mark
        else:  # not cached: filled from Postgres, then the affinity to them read
            followees = await self._feed.following.fill(user)
            affinity = await self._affinity(user, list(followees))
        ids = [int(m) for m in members if m != SENTINEL]
        ids = [i for i in ids if i >= oldest]
        pulled = await self._pulled(user, followees, n)
        if pulled:
            ids = sorted({*ids, *(i for i in pulled if i >= oldest)}, reverse=True)
        # The newest n first; a few more after them while some were dropped.
        kept: list[int] = []
        found: dict[int, Known] = {}
        start, want = 0, n
        for _ in range(ROUNDS):
            batch = ids[start : start + want]
            if not batch:
                break
            start += len(batch)
            known = await self._known(user, batch, followees)
            kept.extend(i for i in batch if i in known)
            found.update(known)
            want = n - len(kept)
            if want <= 0:
                break
        return _pool(kept, found, Reader(followees, affinity, {int(m) for m in shown}))

    async def _own_keys(self, names: list[str], args: list[int]) -> Any:
        """ranking/lua/candidates.lua's answer: the reader's keys, one call."""
        return await self._feed.lean.run(self._script, names, args)

    async def _counters(self, ids: list[int]) -> list[Any]:
        """The candidates' cached counters (None: not cached), one MGET (per node)."""
        return await self._feed.lean.mget([keys.post_counters(i) for i in ids]) if ids else []

    async def _affinity(self, user: int, authors: list[int]) -> dict[int, float]:
        if not authors:
            return {}
        scores = await self._redis.zmscore(keys.ranking_affinity(user), [str(a) for a in authors])
        return {a: float(v) for a, v in zip(authors, scores, strict=True) if v}

    async def _pulled(self, user: int, followees: set[int], n: int) -> list[int]:
        """Recent posts of the followed pull-tier authors: held by this process, else
        from Postgres."""
        followed = [a for a in await self._feed.celebs.ids() if a in followees]
        if not followed:
            return []
        # Past the depth held, every author's posts would come from Postgres.
        depth = min(n, CELEB_POSTS_DEPTH)
        held = await self._feed.celebs.below(followed, MAX_ID, depth)
        if held is not None:
            return held[0]
        rows = await self._c.reads.fetch(FOLLOWED_AUTHORS_POSTS, user, followed, MAX_ID, depth)
        return [r["id"] for r in rows]

    async def _known(self, user: int, ids: list[int], followees: set[int]) -> dict[int, Known]:
        """The facts and counts of the posts among `ids` still shown to `user`."""
        values = await self._counters(ids)
        facts, counted = self.facts, self.counted
        fresh = time.monotonic() - COUNTED_SECONDS
        found: dict[int, Known] = {}
        missing: list[int] = []
        for post_id, counter in zip(ids, values, strict=True):
            if counter == TOMBSTONE:  # deleted
                continue
            fact = facts.get(post_id)
            if counter is None and fact is not None:  # counters not cached (any more)
                held = counted.get(post_id)
                if held is not None and held[0] > fresh:
                    if fact.author == user or fact.author in followees:
                        found[post_id] = (fact, held[1], held[2], held[3])
                    continue
            parts = None if counter is None else counter.split(b",")
            if fact is None or parts is None or len(parts) != 4:
                missing.append(post_id)  # not cached, or not in the cache's form
                continue
            try:
                author, likes, reposts, replies = map(int, parts)
            except ValueError:
                missing.append(post_id)
                continue
            if author != user and author not in followees:
                continue
            found[post_id] = (fact, likes, reposts, replies)
        if missing:
            for post_id, known in (await self._from_postgres(missing)).items():
                if known[0].author == user or known[0].author in followees:
                    found[post_id] = known
        return found

    async def _from_postgres(self, ids: list[int]) -> dict[int, Known]:
        """Facts and counts of live posts the caches do not tell about, from the columns
        ranking reads (no body: a body is built only for a post a page shows, and
        cached then). Their facts are held from now on."""
        rows = await self._c.reads.fetch(CANDIDATE_ROWS, ids)
        now = time.monotonic()
        out: dict[int, Known] = {}
        for post_id, author, handle, reply, repost_of, media, likes, reposts, replies in rows:
            fact = Facts(author, handle, reply, repost_of, media)
            self.facts.put(post_id, fact)
            self.counted.put(post_id, (now, likes, reposts, replies))
            out[post_id] = (fact, likes, reposts, replies)
        return out


def facts_of(post: dict[str, Any]) -> Facts:
    """The facts of a post's JSON (core/postview.py)."""
    repost_of = post.get("repost_of")
    return Facts(
        int(post["author"]["id"]),
        str(post["author"]["handle"]),
        post.get("reply_to") is not None,
        None if repost_of is None else int(repost_of),
        bool(post.get("media_ids")),
    )


def _pool(ids: list[int], found: dict[int, Known], reader: Reader) -> Pool:
    rows = [found[i] for i in ids]
    facts = [r[0] for r in rows]
    return Pool(
        Columns(
            ids,
            [f.author for f in facts],
            [likes + 2 * reposts + replies for _, likes, reposts, replies in rows],
            [f.reply for f in facts],
            [f.repost_of is not None for f in facts],
            [f.media for f in facts],
            [i if f.repost_of is None else f.repost_of for i, f in zip(ids, facts, strict=True)],
        ),
        [f.handle for f in facts],
        [i for i, (_, likes, reposts, _) in zip(ids, rows, strict=True) if likes or reposts],
        reader,
        found,
    )
