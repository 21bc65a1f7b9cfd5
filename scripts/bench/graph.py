"""The synthetic dataset: users, a power-law follow graph and posts, generated in memory
from a seed so every run of the benchmark reads the same data.

Popularity is Zipf-like by rank (user index 0 is the most followed): a follow picks its
followee with probability proportional to (rank + 1) ** -zipf, and a post picks its author
the same way, so popular accounts also post more. How many accounts a user follows is
log-normal around a median. Nothing here touches a database.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from dataclasses import dataclass

from core.ids import EPOCH_MS, IdGenerator
from scripts.bench.progress import Progress

USER_WORKER_ID = 1001  # far above the worker ids services lease, so ids never collide
POST_WORKER_ID = 1000
DAY_MS = 86_400_000
# Post text is drawn from common English words (a realistic size, no meaning).
_WORD_TEXT = (
    "the a of to and in is it you that he was for on are with as I his they be at one "
    "have this from or had by hot word but what some we can out other were all there "
    "when up use your how said an each she which do their time if will way about many "
    "then them write would like so these her long make thing see him two has look more "
    "day could go come did number sound no most people my over know water than call "
    "first who may down side been now find any new work part take get place made live "
    "where after back little only round man year came show every good me give our under "
    "name very through just form sentence great think say help low line differ turn "
    "cause much mean before move right boy old too same tell does set three want air "
    "well also play small end put home read hand port large spell add even land here "
    "must big high such follow act why ask men change went light kind off need house "
    "picture try us again animal point mother world "
)
WORDS = _WORD_TEXT.split()


@dataclass(frozen=True, slots=True)
class Shape:
    users: int = 10_000
    posts: int = 100_000
    median_following: int = 100
    following_sigma: float = 0.7  # log-normal spread of how many accounts a user follows
    zipf: float = 0.5  # popularity exponent by rank; 0.5 gives an in-degree tail like Twitter's
    days: int = 14  # posts are spread over this many past days
    seed: int = 1


@dataclass(frozen=True, slots=True)
class Dataset:
    user_ids: list[int]  # by popularity rank
    following: list[list[int]]  # following[u] = indices of the users u follows
    post_ids: list[int]  # ascending (time-ordered)
    post_authors: list[int]  # index of each post's author
    post_texts: list[str]

    def follower_counts(self) -> list[int]:
        counts = [0] * len(self.user_ids)
        for followees in self.following:
            for f in followees:
                counts[f] += 1
        return counts

    def post_counts(self) -> list[int]:
        counts = [0] * len(self.user_ids)
        for a in self.post_authors:
            counts[a] += 1
        return counts


def _ids_at(worker: int, stamps_ms: list[int]) -> list[int]:
    """Time-ordered ids for ascending timestamps, as if issued at those moments (fewer
    than 4096 per millisecond, or the generator would wait for a clock that never moves)."""
    now = [0]
    gen = IdGenerator(worker, clock=lambda: now[0])
    out: list[int] = []
    for stamp in stamps_ms:
        now[0] = stamp
        out.append(gen.next_id())
    return out


def _popularity(shape: Shape) -> list[float]:
    return list(itertools.accumulate((r + 1) ** -shape.zipf for r in range(shape.users)))


def _followees(rng: random.Random, me: int, want: int, cum: list[float]) -> list[int]:
    # Weighted sampling without replacement: over-draw, dedupe, top up; the order of first
    # appearance keeps the weighting.
    chosen: dict[int, None] = {}
    population = range(len(cum))
    while len(chosen) < want:
        for f in rng.choices(population, cum_weights=cum, k=want - len(chosen) + 8):
            if f != me:
                chosen[f] = None
    return list(chosen)[:want]


def _follow_graph(shape: Shape, rng: random.Random, cum: list[float]) -> list[list[int]]:
    progress = Progress("generate follows", shape.users, " users")
    mu = math.log(shape.median_following)
    ceiling = max(1, min(shape.users - 1, 5_000))
    following: list[list[int]] = []
    for me in range(shape.users):
        want = min(ceiling, max(5, round(rng.lognormvariate(mu, shape.following_sigma))))
        following.append(_followees(rng, me, want, cum))
        progress.add(1)
    progress.finish()
    return following


def _text(rng: random.Random) -> str:
    length = rng.randint(20, 240)
    words: list[str] = []
    size = 0
    while size < length:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:280]


def generate(shape: Shape) -> Dataset:
    rng = random.Random(shape.seed)  # noqa: S311 - synthetic benchmark data, not security
    now_ms = time.time_ns() // 1_000_000
    span = shape.days * DAY_MS
    user_start = max(EPOCH_MS, now_ms - span - 30 * DAY_MS)
    user_ids = _ids_at(USER_WORKER_ID, list(range(user_start, user_start + shape.users)))
    cum = _popularity(shape)
    following = _follow_graph(shape, rng, cum)
    stamps = sorted(rng.randrange(now_ms - span, now_ms - 1_000) for _ in range(shape.posts))
    post_ids = _ids_at(POST_WORKER_ID, stamps)
    authors = rng.choices(range(shape.users), cum_weights=cum, k=shape.posts)
    texts = [_text(rng) for _ in range(shape.posts)]
    return Dataset(user_ids, following, post_ids, authors, texts)
