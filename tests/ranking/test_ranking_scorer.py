"""The scorer's fast paths against the straightforward versions they replaced (kept
here as the reference): the same ranked list, scores, reasons and feature vectors for
the same inputs, and the same diversity order. Pure functions: no I/O."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.ids import EPOCH_MS, SEQUENCE_BITS, WORKER_BITS, id_timestamp_ms
from ranking import scorer
from ranking.features import Signals, row, vector
from ranking.model import SHIPPED_MODEL, Model, load
from ranking.store import ReaderFeatures

NOW = 1_796_000_000.0  # seconds; candidates are up to a few days older
READER = 1


# The reference: ranking/scorer.py as it was before it was made fast (issue 26).


def _ref_signals(
    c: scorer.Candidate, f: ReaderFeatures, followees: set[int], now_ms: int
) -> Signals:
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


def _ref_score(model: Model, rows: list[list[float]]) -> list[float]:
    terms = [(w / s, m) for w, m, s in zip(model.weights, model.mean, model.scale, strict=True)]
    out = []
    for r in rows:
        z = model.bias
        for (w, m), x in zip(terms, r, strict=True):
            z += w * (x - m)
        out.append(z)
    return out


def _ref_diversify(ordered: list[scorer.Candidate]) -> list[scorer.Candidate]:
    remaining = list(ordered)
    recent: deque[int] = deque(maxlen=scorer.WINDOW - 1)
    out: list[scorer.Candidate] = []
    while remaining:
        pick = next(
            (i for i, c in enumerate(remaining) if recent.count(c.author) < scorer.MAX_PER_AUTHOR),
            None,
        )
        if pick is None:
            out.extend(remaining)
            break
        chosen = remaining.pop(pick)
        out.append(chosen)
        recent.append(chosen.author)
    return out


def _ref_reason(
    reader: int, c: scorer.Candidate, s: Signals, f: ReaderFeatures, followees: set[int]
) -> scorer.Reason:
    if c.author == reader:
        return scorer.Reason("yours")
    engaged = [u for u in f.engagers.get(c.id, ()) if u in followees]
    if engaged:
        return scorer.Reason("liked_by", engaged[-1], len(engaged) - 1)
    if s.affinity >= scorer.OFTEN_AFFINITY:
        return scorer.Reason("often")
    if s.likes + 2 * s.reposts + s.replies >= scorer.POPULAR_ENGAGEMENTS:
        return scorer.Reason("popular")
    return scorer.Reason("following")


def _ref_rank(
    model: Model,
    reader: int,
    candidates: list[scorer.Candidate],
    features: ReaderFeatures,
    followees: set[int],
    now: float,
) -> list[tuple[int, float, scorer.Reason, list[float]]]:
    now_ms = int(now * 1000)
    sigs = [_ref_signals(c, features, followees, now_ms) for c in candidates]
    vectors = [vector(s) for s in sigs]
    scores = _ref_score(model, vectors)
    order = sorted(
        range(len(candidates)),
        key=lambda i: (sigs[i].seen, -scores[i], -candidates[i].id),
    )
    seen: set[str] = set()
    kept = []
    for c in (candidates[i] for i in order):
        original = c.post.get("repost_of") or str(c.id)
        if original not in seen:
            seen.add(original)
            kept.append(c)
    reasons = {
        c.id: _ref_reason(reader, c, s, features, followees)
        for c, s in zip(candidates, sigs, strict=True)
    }
    index = {c.id: i for i, c in enumerate(candidates)}
    return [
        (c.id, scores[index[c.id]], reasons[c.id], vectors[index[c.id]])
        for c in _ref_diversify(kept)
    ]


# Inputs: few authors and users, so that authors fill the window, scores tie, followees
# engage and reposts meet their originals.

AUTHORS = st.integers(1, 6)
USERS = st.integers(1, 12)


@st.composite
def pages(draw: st.DrawFn) -> tuple[list[scorer.Candidate], ReaderFeatures, set[int]]:
    n = draw(st.integers(0, 40))
    ages = draw(st.lists(st.integers(-5_000, 4 * 86_400_000), min_size=n, max_size=n))
    ids = []
    for seq, age in enumerate(ages):
        ms = int(NOW * 1000) - age - EPOCH_MS
        ids.append((ms << (WORKER_BITS + SEQUENCE_BITS)) | seq)
    candidates = []
    for post_id in ids:
        repost_of = draw(st.none() | st.sampled_from([str(i) for i in ids] + ["7", "8"]))
        post: dict[str, Any] = {
            "id": str(post_id),
            "reply_to": draw(st.none() | st.just("5")),
            "repost_of": repost_of,
            "media_ids": draw(st.sampled_from([[], ["3"]])),
        }
        if draw(st.booleans()):
            post["counts"] = {
                "likes": draw(st.integers(0, 30)),
                "reposts": draw(st.integers(0, 5)),
                "replies": draw(st.integers(0, 5)),
            }
        candidates.append(scorer.Candidate(post_id, draw(AUTHORS), "h", post))
    affinity = draw(st.dictionaries(AUTHORS, st.floats(0, 30, allow_nan=False)))
    engagers = {
        i: draw(st.lists(USERS, min_size=1, max_size=6, unique=True))
        for i in ids
        if draw(st.booleans())
    }
    seen = {i for i in ids if draw(st.integers(0, 3)) == 0}
    followees = draw(st.sets(USERS))
    return candidates, ReaderFeatures(affinity, engagers, seen), followees


MODELS = st.sampled_from(["shipped", "random"])


def _model(kind: str, weights: list[float]) -> Model:
    shipped = load(SHIPPED_MODEL)
    if kind == "shipped":
        return shipped
    return Model("t", list(shipped.features), shipped.mean, shipped.scale, weights, 0.3, {})


@settings(max_examples=200, deadline=None)
@given(
    pages(),
    MODELS,
    st.lists(st.floats(-3, 3, allow_nan=False), min_size=8, max_size=8),
)
def test_rank_is_the_reference_ranking(
    page: tuple[list[scorer.Candidate], ReaderFeatures, set[int]],
    kind: str,
    weights: list[float],
) -> None:
    candidates, features, followees = page
    model = _model(kind, weights)
    got = scorer.rank(model, READER, candidates, features, followees, NOW)
    want = _ref_rank(model, READER, candidates, features, followees, NOW)
    assert [(r.id, r.score, r.reason, r.features) for r in got] == want


@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(1, 5), max_size=60))
def test_linear_diversify_gives_the_old_order(authors: list[int]) -> None:
    ordered = [scorer.Candidate(i, a, "h", {}) for i, a in enumerate(authors)]
    assert scorer.diversify(ordered) == _ref_diversify(ordered)


def test_diversify_puts_a_prolific_authors_tail_last_in_order() -> None:
    authors = [1, 1, 1, 1, 2, 1, 1]
    ordered = [scorer.Candidate(i, a, "h", {}) for i, a in enumerate(authors)]
    assert [c.id for c in scorer.diversify(ordered)] == [0, 1, 4, 2, 3, 5, 6]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=8, max_size=8), max_size=30),
    st.lists(st.floats(-3, 3, allow_nan=False), min_size=8, max_size=8),
)
def test_model_scores_have_the_bits_of_the_feature_by_feature_sum(
    rows: list[list[float]], weights: list[float]
) -> None:
    model = _model("random", weights)
    assert model.score(rows) == _ref_score(model, rows)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=8, max_size=8), max_size=30),
    st.lists(st.floats(-3, 3, allow_nan=False), min_size=8, max_size=8),
)
def test_model_scores_of_a_matrix_have_the_bits_of_its_rows(
    rows: list[list[float]], weights: list[float]
) -> None:
    model = _model("random", weights)
    matrix = np.array(rows, dtype=np.float64).reshape(len(rows), 8)
    assert model.score(matrix) == model.score(rows) == _ref_score(model, rows)


@given(
    st.floats(0, 50),
    st.integers(0, 20),
    st.integers(0, 100),
    st.floats(-1, 200),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_row_is_vector_of_the_same_signals(
    affinity: float,
    proof: int,
    likes: int,
    age: float,
    reply: bool,
    repost: bool,
    media: bool,
    seen: bool,
) -> None:
    s = Signals(affinity, proof, likes, 1, 2, age, reply, repost, media, seen)
    got = row(affinity, proof, likes + 2 + 2, age, reply, repost, media, seen)
    assert got == vector(s)
    assert all(math.isfinite(x) for x in got)
