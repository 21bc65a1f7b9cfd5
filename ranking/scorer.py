"""Re-ranks a reader's hydrated candidates: features, model scores, then the page rules
(seen posts after unseen ones, a post and its reposts once, at most MAX_PER_AUTHOR posts
of one author in any WINDOW in a row) and a short reason per post. No I/O here: the
server hands in the candidates and the features it read (server/ranked.py)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from core.ids import id_timestamp_ms
from ranking.features import Signals, vector
from ranking.model import Model
from ranking.store import ReaderFeatures

MAX_PER_AUTHOR = 2
WINDOW = 10
OFTEN_AFFINITY = 1.0  # about one recent like of the author
POPULAR_ENGAGEMENTS = 5


@dataclass(frozen=True, slots=True)
class Candidate:
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


@dataclass(frozen=True, slots=True)
class Ranked:
    id: int
    score: float
    reason: Reason
    features: list[float]  # what the model scored (logged as an impression when shown)


@dataclass(frozen=True, slots=True)
class Shown:
    """A ranked post as a page shows it: its JSON and its reason in words."""

    id: int
    body: bytes
    reason: str
    features: list[float]


def signals(c: Candidate, f: ReaderFeatures, followees: set[int], now_ms: int) -> Signals:
    counts = c.post.get("counts") or {}
    return Signals(
        affinity=f.affinity.get(c.author, 0.0),
        followee_engagers=sum(1 for u in f.engagers.get(c.id, ()) if u in followees),
        likes=int(counts.get("likes", 0)),
        reposts=int(counts.get("reposts", 0)),
        replies=int(counts.get("replies", 0)),
        age_hours=max(0, now_ms - id_timestamp_ms(c.id)) / 3_600_000,
        is_reply=c.post.get("reply_to") is not None,
        is_repost=c.post.get("repost_of") is not None,
        has_media=bool(c.post.get("media_ids")),
        seen=c.id in f.seen,
    )


def rank(
    model: Model,
    reader: int,
    candidates: list[Candidate],
    features: ReaderFeatures,
    followees: set[int],
    now: float | None = None,
) -> list[Ranked]:
    now_ms = int((time.time() if now is None else now) * 1000)
    sigs = [signals(c, features, followees, now_ms) for c in candidates]
    vectors = [vector(s) for s in sigs]
    scores = model.score(vectors)
    order = sorted(
        range(len(candidates)),
        key=lambda i: (sigs[i].seen, -scores[i], -candidates[i].id),
    )
    kept = _once_per_original([candidates[i] for i in order])
    reasons = {
        c.id: _reason(reader, c, s, features, followees)
        for c, s in zip(candidates, sigs, strict=True)
    }
    index = {c.id: i for i, c in enumerate(candidates)}
    return [
        Ranked(c.id, scores[index[c.id]], reasons[c.id], vectors[index[c.id]])
        for c in diversify(kept)
    ]


def _once_per_original(ordered: list[Candidate]) -> list[Candidate]:
    """A post and its reposts: only the first of them in rank order stays."""
    seen: set[str] = set()
    out = []
    for c in ordered:
        original = c.post.get("repost_of") or str(c.id)
        if original not in seen:
            seen.add(original)
            out.append(c)
    return out


def diversify(ordered: list[Candidate]) -> list[Candidate]:
    """The same order, except that each position takes the best remaining post whose
    author has fewer than MAX_PER_AUTHOR posts among the previous WINDOW - 1. When only
    such authors remain (one prolific author at the end of a list), they follow in order."""
    remaining = list(ordered)
    recent: deque[int] = deque(maxlen=WINDOW - 1)
    out: list[Candidate] = []
    while remaining:
        pick = next(
            (i for i, c in enumerate(remaining) if recent.count(c.author) < MAX_PER_AUTHOR),
            None,
        )
        if pick is None:
            out.extend(remaining)
            break
        chosen = remaining.pop(pick)
        out.append(chosen)
        recent.append(chosen.author)
    return out


def _reason(
    reader: int, c: Candidate, s: Signals, f: ReaderFeatures, followees: set[int]
) -> Reason:
    if c.author == reader:
        return Reason("yours")
    engaged = [u for u in f.engagers.get(c.id, ()) if u in followees]
    if engaged:
        return Reason("liked_by", engaged[-1], len(engaged) - 1)
    if s.affinity >= OFTEN_AFFINITY:
        return Reason("often")
    if s.likes + 2 * s.reposts + s.replies >= POPULAR_ENGAGEMENTS:
        return Reason("popular")
    return Reason("following")


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
