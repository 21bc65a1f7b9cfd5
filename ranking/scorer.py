"""Re-ranks a reader's hydrated candidates: features, model scores, then the page rules
(seen posts after unseen ones, a post and its reposts once, at most MAX_PER_AUTHOR posts
of one author in any WINDOW in a row) and a short reason per post. No I/O here: the
server hands in the candidates and the features it read (server/feed/ranked.py)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

from core.ids import id_timestamp_ms
from ranking.features import row
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
    """A ranked post as a page shows it: its JSON and its reason in words."""

    id: int
    body: bytes
    reason: str
    features: list[float]


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
    now_ms = int((time.time() if now is None else now) * 1000)
    affinity, engagers, seen = features.affinity, features.engagers, features.seen
    # Column by column: a comprehension per signal costs less than a loop per candidate.
    ids = [c.id for c in candidates]
    posts = [c.post for c in candidates]
    counts = [p.get("counts") or _NO_COUNTS for p in posts]
    engagements = [
        int(k.get("likes", 0)) + 2 * int(k.get("reposts", 0)) + int(k.get("replies", 0))
        for k in counts
    ]
    proof = [0] * len(ids)
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
    rows = list(
        map(
            row,
            [affinity.get(c.author, 0.0) for c in candidates],
            proof,
            engagements,
            [max(0, now_ms - id_timestamp_ms(i)) / 3_600_000 for i in ids],
            [p.get("reply_to") is not None for p in posts],
            [p.get("repost_of") is not None for p in posts],
            [bool(p.get("media_ids")) for p in posts],
            was_seen,
        )
    )
    scores = model.score(rows)
    order = sorted(range(len(ids)), key=lambda i: (was_seen[i], -scores[i], -ids[i]))
    kept = _once_per_original(candidates, order)
    out = []
    for i in _diversified([candidates[i].author for i in kept]):
        at = kept[i]
        c = candidates[at]
        reason = _reason(reader, c, liked.get(at), affinity.get(c.author, 0.0), engagements[at])
        out.append(Ranked(c.id, scores[at], reason, rows[at]))
    return out


def _once_per_original(candidates: list[Candidate], order: list[int]) -> list[int]:
    """A post and its reposts: only the first of them in rank order stays."""
    seen: set[str] = set()
    out = []
    for i in order:
        c = candidates[i]
        original = c.post.get("repost_of") or str(c.id)
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
    out: list[int] = []
    recent: deque[int] = deque()  # authors of the last WINDOW - 1 posts placed
    count: dict[int, int] = {}  # how often each author is in `recent`
    waiting: dict[int, deque[int]] = {}
    unread = 0
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


def _reason(
    reader: int, c: Candidate, liked: list[int] | None, affinity: float, engagements: int
) -> Reason:
    if c.author == reader:
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
