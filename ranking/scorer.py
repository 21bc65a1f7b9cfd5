"""Re-ranks a reader's hydrated candidates: features, model scores, then the page rules
(seen posts after unseen ones, a post and its reposts once, at most MAX_PER_AUTHOR posts
of one author in any WINDOW in a row) and a short reason per post. No I/O here: the
server hands in the candidates and the features it read (server/feed/ranked.py)."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from core.ids import EPOCH_MS, SEQUENCE_BITS, WORKER_BITS
from ranking.features import RECENCY_HOURS, VELOCITY_PRIOR_HOURS
from ranking.model import Model
from ranking.store import ReaderFeatures

MAX_PER_AUTHOR = 2
WINDOW = 10
OFTEN_AFFINITY = 1.0  # about one recent like of the author
POPULAR_ENGAGEMENTS = 5
_NO_COUNTS: dict[str, int] = {}

# A first page handles a few hundred candidates: the per-candidate records are named
# tuples, several times cheaper to make than frozen dataclasses.


class Candidate(NamedTuple):
    id: int
    author: int
    handle: str
    post: dict[str, Any]  # the hydrated post (counts, reply_to, repost_of, media_ids)


@dataclass(frozen=True, slots=True)
class Reason:
    """What a reason says; handles of engagers are filled in by the server."""

    kind: str  # "liked_by", "often", "popular", "following", "yours"
    user: int | None = None  # the first followee who engaged (liked_by)
    others: int = 0


YOURS = Reason("yours")
OFTEN = Reason("often")
POPULAR = Reason("popular")
FOLLOWING = Reason("following")


class Ranked(NamedTuple):
    id: int
    score: float
    reason: Reason
    features: list[float]  # what the model scored (logged as an impression when shown)


class Shown(NamedTuple):
    """A ranked post as a page shows it: its reason in words (its JSON is read for the
    page that shows it)."""

    id: int
    reason: str
    features: list[float]


class Columns(NamedTuple):
    """Candidates column by column: what scoring reads of each, in the same order.
    The server builds these from ids, counters and cached post facts
    (server/feed/candidates.py), without post bodies."""

    ids: list[int]
    authors: list[int]
    engagements: list[int]  # likes + 2 * reposts + replies
    replies: list[bool]  # is a reply
    reposts: list[bool]  # is a repost
    media: list[bool]  # has media
    originals: list[object]  # the post a repost repeats, else the post itself

    @classmethod
    def of(cls, candidates: list[Candidate]) -> Columns:
        posts = [c.post for c in candidates]
        counts = [p.get("counts") or _NO_COUNTS for p in posts]
        return cls(
            [c.id for c in candidates],
            [c.author for c in candidates],
            [
                int(k.get("likes", 0)) + 2 * int(k.get("reposts", 0)) + int(k.get("replies", 0))
                for k in counts
            ],
            [p.get("reply_to") is not None for p in posts],
            [p.get("repost_of") is not None for p in posts],
            [bool(p.get("media_ids")) for p in posts],
            [p.get("repost_of") or str(c.id) for c, p in zip(candidates, posts, strict=True)],
        )


def rank(
    model: Model,
    reader: int,
    candidates: list[Candidate],
    features: ReaderFeatures,
    followees: set[int],
    now: float | None = None,
) -> list[Ranked]:
    """Every candidate but the repeats of a post, best first: unseen before seen, then
    by score, then newest; then the author rule (diversify). Reasons are worked out only
    for the posts kept, from what scoring already computed."""
    return rank_columns(model, reader, Columns.of(candidates), features, followees, now)


def rank_columns(
    model: Model,
    reader: int,
    columns: Columns,
    features: ReaderFeatures,
    followees: set[int],
    now: float | None = None,
) -> list[Ranked]:
    """rank() of candidates given as columns."""
    now_ms = int((time.time() if now is None else now) * 1000)
    affinity, engagers, seen = features.affinity, features.engagers, features.seen
    ids, authors, engagements = columns.ids, columns.authors, columns.engagements
    n = len(ids)
    proof = [0] * n
    liked: dict[int, list[int]] = {}  # position -> the followees who engaged, if any
    if engagers:
        for i, post_id in enumerate(ids):
            users = engagers.get(post_id)
            if users:
                followed = [u for u in users if u in followees]
                if followed:
                    liked[i] = followed
                    proof[i] = len(followed)
    was_seen = [i in seen for i in ids]
    # Ages in hours, never negative: id_timestamp_ms() inlined (a call per id costs more).
    to_ms = WORKER_BITS + SEQUENCE_BITS
    ages = [max(0, now_ms - ((i >> to_ms) + EPOCH_MS)) / 3_600_000 for i in ids]
    matrix = _matrix(affinity, authors, proof, engagements, ages, columns, was_seen)
    scores = model.score(matrix)
    # By seen, then score (highest first), then id (newest first).
    keys = (-np.array(ids, dtype=np.int64), -np.array(scores), np.array(was_seen))
    order: list[int] = np.lexsort(keys).tolist() if n else []
    # Without reposts every post is its own original: nothing to drop.
    kept = _once_per_original(columns.originals, order) if any(columns.reposts) else order
    picks = [kept[i] for i in _diversified([authors[i] for i in kept])]
    rows: list[list[float]] = matrix.tolist()
    reason = _reason
    return [
        Ranked(
            ids[at],
            scores[at],
            reason(
                reader, authors[at], liked.get(at), affinity.get(authors[at], 0.0), engagements[at]
            ),
            rows[at],
        )
        for at in picks
    ]


def _matrix(
    affinity: dict[int, float],
    authors: list[int],
    proof: list[int],
    engagements: list[int],
    ages: list[float],
    columns: Columns,
    seen: list[bool],
) -> npt.NDArray[np.float64]:
    """The feature rows, a row per candidate, each features.row() of the same signals
    bit for bit (ages already not negative): log1p and exp by the math module, as row()
    computes them (numpy's may differ in the last bit). Most features take a few values
    on a page (an author's affinity, no engagement yet, the flags): each is computed once
    per value. tests/ranking/test_ranking_scorer.py compares the rows with row()'s."""
    log1p, exp = math.log1p, math.exp
    by_author = {a: log1p(max(0.0, affinity.get(a, 0.0))) for a in set(authors)}
    by_proof = {p: log1p(p) for p in set(proof)}
    prior, hours = VELOCITY_PRIOR_HOURS, RECENCY_HOURS
    matrix = np.empty((len(authors), 8), dtype=np.float64)
    matrix[:, 0] = [by_author[a] for a in authors]
    matrix[:, 1] = [by_proof[p] for p in proof]
    # log1p(0.0) is 0.0: most posts have no engagement yet.
    matrix[:, 2] = [
        log1p(e / (age + prior)) if e else 0.0 for e, age in zip(engagements, ages, strict=True)
    ]
    matrix[:, 3] = [exp(-age / hours) for age in ages]
    matrix[:, 4] = columns.replies
    matrix[:, 5] = columns.reposts
    matrix[:, 6] = columns.media
    matrix[:, 7] = seen
    return matrix


def _once_per_original(originals: list[object], order: list[int]) -> list[int]:
    """A post and its reposts: only the first of them in rank order stays."""
    seen: set[object] = set()
    out = []
    for i in order:
        original = originals[i]
        if original not in seen:
            seen.add(original)
            out.append(i)
    return out


def diversify(ordered: list[Candidate]) -> list[Candidate]:
    """The same order, except that each position takes the best remaining post whose
    author has fewer than MAX_PER_AUTHOR posts among the previous WINDOW - 1. When only
    such authors remain (one prolific author at the end of a list), they follow in order."""
    return [ordered[i] for i in _diversified([c.author for c in ordered])]


def _diversified(authors: list[int]) -> list[int]:
    """diversify() as positions in `authors`, in linear time: a post passed over because
    its author was full waits in that author's queue. Every waiting post comes before the
    next unread one, so the best remaining post with room is the earliest head of a
    waiting author with room, else the next unread post with room. Few authors wait at a
    time (at most (WINDOW - 1) // MAX_PER_AUTHOR are full)."""
    n = len(authors)
    # Up to the first post whose author is full, every post stays where it is.
    start = _first_crowded(authors)
    out: list[int] = list(range(start))
    recent: deque[int] = deque(authors[max(0, start - WINDOW + 1) : start])  # last WINDOW - 1
    count: dict[int, int] = {}  # how often each author is in `recent`
    for author in recent:
        count[author] = count.get(author, 0) + 1
    waiting: dict[int, deque[int]] = {}
    unread = start
    while len(out) < n:
        pick = -1
        for author, queue in waiting.items():
            if count.get(author, 0) < MAX_PER_AUTHOR and (pick < 0 or queue[0] < pick):
                pick = queue[0]
        if pick >= 0:
            queue = waiting[authors[pick]]
            queue.popleft()
            if not queue:
                del waiting[authors[pick]]
        else:
            while unread < n and count.get(authors[unread], 0) >= MAX_PER_AUTHOR:
                waiting.setdefault(authors[unread], deque()).append(unread)
                unread += 1
            if unread == n:  # only full authors remain: in order
                out.extend(sorted(i for queue in waiting.values() for i in queue))
                break
            pick = unread
            unread += 1
        out.append(pick)
        author = authors[pick]
        recent.append(author)
        count[author] = count.get(author, 0) + 1
        if len(recent) > WINDOW - 1:
            count[recent.popleft()] -= 1
    return out


def _first_crowded(authors: list[int]) -> int:
    """The first position whose author already has MAX_PER_AUTHOR posts among the
    previous WINDOW - 1 (len(authors) if none): diversify() keeps every post before it
    in place, and this scan costs less than placing them one by one."""
    last: dict[int, deque[int]] = {}  # author -> their last MAX_PER_AUTHOR positions
    for i, author in enumerate(authors):
        placed = last.get(author)
        if placed is None:
            last[author] = deque((i,), maxlen=MAX_PER_AUTHOR)
            continue
        if len(placed) == MAX_PER_AUTHOR and i - placed[0] < WINDOW:
            return i
        placed.append(i)
    return len(authors)


def _reason(
    reader: int, author: int, liked: list[int] | None, affinity: float, engagements: int
) -> Reason:
    if author == reader:
        return YOURS
    if liked:
        return Reason("liked_by", liked[-1], len(liked) - 1)
    if affinity >= OFTEN_AFFINITY:
        return OFTEN
    if engagements >= POPULAR_ENGAGEMENTS:
        return POPULAR
    return FOLLOWING


def reason_text(reason: Reason, author_handle: str, handles: dict[int, str]) -> str:
    if reason.kind == "liked_by" and reason.user is not None:
        who = "@" + handles.get(reason.user, "someone")
        if reason.others:
            others = "other" if reason.others == 1 else "others"
            return f"liked by {who} and {reason.others} {others} you follow"
        return f"liked by {who}, whom you follow"
    if reason.kind == "often":
        return f"you often like posts by @{author_handle}"
    if reason.kind == "popular":
        return "popular in your network"
    if reason.kind == "yours":
        return "your post"
    return f"new from @{author_handle}, whom you follow"
