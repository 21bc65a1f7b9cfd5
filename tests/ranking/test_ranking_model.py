"""The ranked feed's offline half: training on the seeded simulation, the model file, and
the page rules of the scorer (pure functions: no I/O to stand in for)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import pytest

from core.ids import IdGenerator
from ranking import scorer
from ranking.model import SHIPPED_MODEL, ModelError, ModelHolder, load
from ranking.simulate import Config
from ranking.store import ReaderFeatures
from ranking.train import main, train

SMALL = Config(seed=3, users=100, hours=24, sessions_per_hour=30)


def test_training_is_deterministic_and_beats_the_chronological_order() -> None:
    first, second = train(SMALL), train(SMALL)
    assert first.model.dumps() == second.model.dumps()
    assert first.ndcg_model > first.ndcg_chronological
    assert first.auc > 0.5
    other = train(dataclasses.replace(SMALL, seed=4))
    assert other.model.version != first.model.version


def test_the_shipped_model_is_what_the_training_command_writes(tmp_path: Path) -> None:
    out = tmp_path / "model.json"
    assert main(["--out", str(out)]) == 0
    assert out.read_bytes() == SHIPPED_MODEL.read_bytes()
    shipped = load(SHIPPED_MODEL)
    metrics = shipped.metrics
    assert metrics["ndcg20"] > metrics["ndcg20_chronological"] and metrics["auc"] > 0.5
    # Learned, and in the directions the simulation's hidden behaviour implies.
    weights = dict(zip(shipped.features, shipped.weights, strict=True))
    assert weights["affinity"] > 0 > weights["seen"]


def test_a_malformed_or_foreign_model_is_refused_and_the_holder_keeps_the_last_good_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "model.json"
    holder = ModelHolder(path)
    assert holder.current() is None  # no file: no model
    path.write_bytes(SHIPPED_MODEL.read_bytes())
    holder._checked = float("-inf")  # the next request checks the file again
    good = holder.current()
    assert good is not None
    path.write_bytes(b'{"format": 1, "features": ["other"]}')
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    holder._checked = float("-inf")
    assert holder.current() is good
    with pytest.raises(ModelError):
        load(path)


def _candidate(ids: IdGenerator, author: int, repost_of: int | None = None) -> scorer.Candidate:
    post_id = ids.next_id()
    post: dict[str, Any] = {
        "id": str(post_id),
        "repost_of": None if repost_of is None else str(repost_of),
        "reply_to": None,
        "media_ids": [],
        "counts": {"likes": 0, "reposts": 0, "replies": 0},
    }
    return scorer.Candidate(post_id, author, f"user{author}", post)


def test_at_most_two_posts_of_one_author_in_any_ten_and_a_post_with_its_reposts_once() -> None:
    ids = IdGenerator(1)
    prolific = [_candidate(ids, 1) for _ in range(4)]
    others = [_candidate(ids, 10 + i) for i in range(16)]
    original = others[0]
    reposts = [_candidate(ids, 40 + i, repost_of=original.id) for i in range(2)]
    # The prolific author is the reader's favourite: without the rule, their four posts
    # would come first.
    features = ReaderFeatures(affinity={1: 20.0}, engagers={}, seen=set())
    ranked = scorer.rank(
        load(SHIPPED_MODEL), 99, prolific + others + reposts, features, followees=set()
    )
    order = [r.id for r in ranked]
    by_id = {c.id: c for c in prolific + others + reposts}
    authors = [by_id[i].author for i in order]
    assert authors[:2] == [1, 1]
    for start in range(len(authors)):
        window = authors[start : start + 10]
        assert all(window.count(a) <= 2 for a in window), authors
    family = {original.id, *(r.id for r in reposts)}
    assert len(family & set(order)) == 1
    assert len(order) == len(prolific) + len(others)
    reason = ranked[0].reason
    assert scorer.reason_text(reason, "user1", {}) == "you often like posts by @user1"


def test_seen_posts_come_after_unseen_ones_and_social_proof_names_a_followee() -> None:
    ids = IdGenerator(1)
    old, new = _candidate(ids, 1), _candidate(ids, 2)
    features = ReaderFeatures(affinity={}, engagers={old.id: [7, 8, 9]}, seen={new.id})
    ranked = scorer.rank(load(SHIPPED_MODEL), 99, [new, old], features, followees={7, 8})
    assert [r.id for r in ranked] == [old.id, new.id]
    text = scorer.reason_text(ranked[0].reason, "user1", {8: "ana", 7: "bo"})
    assert text == "liked by @ana and 1 other you follow"
