"""`python -m ranking.train`: fit the ranked feed's model and write its file.

Impressions (what a reader was shown, labelled by whether they engaged within a day) come
from the seeded simulation of ranking/simulate.py (the shipped model), or with
`--from-database` from the ranked pages real readers were shown (ranking/impressions.py);
the older three quarters train, the newest quarter is held out. A logistic regression
(L2, Newton's method: exact and deterministic) is fitted on standardised features.
Printed: held-out AUC of the impressions, and NDCG@20 of the held-out sessions ordered
by the model beside the same sessions in chronological order. Same seed, same bytes in
the model file.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import hashlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import numpy as np
from numpy.typing import NDArray

from core.settings import Settings
from ranking.features import FEATURES
from ranking.impressions import load_sessions
from ranking.model import SHIPPED_MODEL, Model
from ranking.simulate import Config, Session, simulate

Array = NDArray[np.float64]
MIN_SESSIONS = 20
TRAIN_FRACTION = 0.75
L2 = 1e-2
NEWTON_STEPS = 25
K = 20


class TrainingError(Exception):
    """Not enough data to fit a model that means anything."""


@dataclass(frozen=True, slots=True)
class Result:
    model: Model
    auc: float
    ndcg_model: float
    ndcg_chronological: float
    impressions: int


def fit(x: Array, y: Array) -> tuple[Array, Array, Array, float]:
    """(mean, scale, weights, bias) of an L2-regularised logistic regression."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], L2 * len(x))
    penalty[-1] = 0.0  # the bias is not shrunk
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        gradient = z.T @ (p - y) + penalty * w
        hessian = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if float(np.abs(step).max()) < 1e-10:
            break
    return mean, scale, w[:-1], float(w[-1])


def auc(scores: list[float], labels: list[int]) -> float:
    """Probability that a random engaged impression outscores a random other one."""
    order = np.argsort(np.asarray(scores), kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    sorted_scores = np.asarray(scores)[order]
    # ties share their average rank
    _, start, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for s, c in zip(start, counts, strict=True):
        if c > 1:
            ranks[order[s : s + c]] = s + (c + 1) / 2
    positive = np.asarray(labels) == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return math.nan
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ndcg(labels_in_order: list[int], k: int = K) -> float | None:
    ideal = sorted(labels_in_order, reverse=True)[:k]
    best = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    if best == 0:
        return None  # nothing to find: the session says nothing about an order
    return sum(g / math.log2(i + 2) for i, g in enumerate(labels_in_order[:k])) / best


def train(config: Config) -> Result:
    """Fit on the seeded simulation: its first TRAIN_FRACTION of hours train."""
    sessions = simulate(config)
    cut = config.hours * TRAIN_FRACTION
    train_on = [s for s in sessions if s.hour <= cut]
    held_out = [s for s in sessions if s.hour > cut]
    return fit_sessions(train_on, held_out, f"lr-sim{config.seed}")


def fit_sessions(train_on: list[Session], held_out: list[Session], origin: str) -> Result:
    """The model fitted on `train_on`'s impressions, with its metrics on `held_out`."""
    x, y = _impressions(train_on)
    if len(set(y.tolist())) < 2:
        raise TrainingError("the training impressions need both engaged and ignored ones")
    mean, scale, weights, bias = fit(x, y)
    digest = hashlib.sha256(np.concatenate([mean, scale, weights, [bias]]).tobytes())
    model = Model(
        version=f"{origin}-{digest.hexdigest()[:12]}",
        features=list(FEATURES),
        mean=[round(float(v), 12) for v in mean],
        scale=[round(float(v), 12) for v in scale],
        weights=[round(float(v), 12) for v in weights],
        bias=round(bias, 12),
        metrics={},
    )
    hx, hy = _impressions(held_out)
    held_auc = auc(model.score(hx.tolist()), [int(v) for v in hy])
    ranked, chronological = [], []
    for s in held_out:
        scores = model.score(s.rows)
        order = sorted(range(len(s.rows)), key=lambda i: (-scores[i], i))
        by_model = ndcg([s.labels[i] for i in order])
        by_time = ndcg(s.labels)
        if by_model is not None and by_time is not None:
            ranked.append(by_model)
            chronological.append(by_time)
    metrics = {
        "auc": round(held_auc, 6),
        "ndcg20": round(float(np.mean(ranked)), 6) if ranked else math.nan,
        "ndcg20_chronological": round(float(np.mean(chronological)), 6) if ranked else math.nan,
    }
    model = dataclasses.replace(model, metrics=metrics)
    return Result(model, held_auc, metrics["ndcg20"], metrics["ndcg20_chronological"], len(y))


async def train_from_database(database_url: str, days: int) -> Result:
    """Fit on the logged impressions of the last `days` (ranking/impressions.py): the
    oldest TRAIN_FRACTION of ranked pages train, the newest are held out."""
    now = dt.datetime.now(dt.UTC)
    conn = await asyncpg.connect(database_url)
    try:
        sessions = await load_sessions(conn, now - dt.timedelta(days=days), now)
    finally:
        await conn.close()
    if len(sessions) < MIN_SESSIONS:
        raise TrainingError(
            f"{len(sessions)} ranked pages with final labels (a day old) in the last {days} "
            f"days; at least {MIN_SESSIONS} are needed"
        )
    cut = int(len(sessions) * TRAIN_FRACTION)
    return fit_sessions(sessions[:cut], sessions[cut:], "lr-db")


def _impressions(sessions: list[Session]) -> tuple[Array, Array]:
    rows = [row for s in sessions for row in s.rows[: s.shown]]
    labels = [label for s in sessions for label in s.labels[: s.shown]]
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(FEATURES)), np.asarray(
        labels, dtype=np.float64
    )


def main(argv: list[str] | None = None) -> int:
    defaults = Config()
    parser = argparse.ArgumentParser(prog="python -m ranking.train", description=__doc__)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--users", type=int, default=defaults.users)
    parser.add_argument("--hours", type=int, default=defaults.hours)
    parser.add_argument("--out", type=Path, default=SHIPPED_MODEL, help="the model file")
    parser.add_argument(
        "--from-database",
        action="store_true",
        help="fit on the impressions logged in DATABASE_URL instead of the simulation",
    )
    parser.add_argument(
        "--days", type=int, default=30, help="with --from-database: how far back to read"
    )
    args = parser.parse_args(argv)
    try:
        if args.from_database:
            url = Settings.from_env().database_url
            result = asyncio.run(train_from_database(url, args.days))
        else:
            result = train(Config(seed=args.seed, users=args.users, hours=args.hours))
    except TrainingError as exc:
        print(f"ranking.train: {exc}", file=sys.stderr)
        return 2
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(result.model.dumps() + b"\n")
    tmp.replace(args.out)  # atomic: a server reloading it never reads half a file
    print(f"model {result.model.version} -> {args.out} ({result.impressions} impressions)")
    print(f"held-out AUC {result.auc:.4f}")
    print(
        f"held-out NDCG@{K}: model {result.ndcg_model:.4f}, "
        f"chronological {result.ndcg_chronological:.4f}"
    )
    for name, weight in zip(result.model.features, result.model.weights, strict=True):
        print(f"  {name:>13} {weight:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
