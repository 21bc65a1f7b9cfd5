"""The model file (versioned JSON: feature names, standardisation, weights) and a holder
that serves the newest file to the server, reloading it when it changes."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

from ranking.features import FEATURES

log = logging.getLogger(__name__)

FORMAT = 1  # bumped when the file's layout changes; a server refuses other formats
SHIPPED_MODEL = Path(__file__).with_name("model.json")
RELOAD_CHECK_SECONDS = 1.0  # how often a request may stat() the file


class ModelError(Exception):
    """The model file is missing, malformed or made for other features."""


@dataclass(frozen=True, slots=True)
class Model:
    version: str
    features: list[str]
    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float
    metrics: dict[str, float]
    format: int = FORMAT

    def score(self, rows: list[list[float]] | npt.NDArray[np.float64]) -> list[float]:
        """The logit of engagement for each row (ordering only needs the logit): the bias
        plus each feature's term, added in feature order, so every way of computing it
        here gives the same bits (the order of a page depends on them). Rows as a matrix
        (ranking/scorer.py): column by column, the same operations in the same order,
        each rounded as Python rounds it."""
        terms = [(w / s, m) for w, m, s in zip(self.weights, self.mean, self.scale, strict=True)]
        if isinstance(rows, np.ndarray):
            if rows.shape[1:] != (len(terms),):
                raise ValueError(f"rows of {rows.shape[1:]} features, the model has {len(terms)}")
            z = np.full(rows.shape[0], self.bias)
            for column, (w, m) in enumerate(terms):
                z = z + w * (rows[:, column] - m)
            scores: list[float] = z.tolist()
            return scores
        if len(terms) == 8:
            # A page scores a few hundred rows: spelled out, about 3x the loop's speed (a
            # row of another length fails to unpack: ValueError, as zip(strict=True)).
            (w0, m0), (w1, m1), (w2, m2), (w3, m3), (w4, m4), (w5, m5), (w6, m6), (w7, m7) = terms
            b = self.bias
            return [
                b
                + w0 * (x0 - m0)
                + w1 * (x1 - m1)
                + w2 * (x2 - m2)
                + w3 * (x3 - m3)
                + w4 * (x4 - m4)
                + w5 * (x5 - m5)
                + w6 * (x6 - m6)
                + w7 * (x7 - m7)
                for x0, x1, x2, x3, x4, x5, x6, x7 in rows
            ]
        return [self._score_one(terms, row) for row in rows]

    def _score_one(self, terms: list[tuple[float, float]], row: list[float]) -> float:
        z = self.bias
        for (w, m), x in zip(terms, row, strict=True):
            z += w * (x - m)
        return z

    def contributions(self, row: list[float]) -> dict[str, float]:
        """Each feature's share of the logit: what the reason of a post is drawn from."""
        return {
            name: w * (x - m) / s
            for name, w, m, s, x in zip(
                self.features, self.weights, self.mean, self.scale, row, strict=True
            )
        }

    def dumps(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    @classmethod
    def loads(cls, raw: bytes) -> Model:
        try:
            data = orjson.loads(raw)
            model = cls(
                version=str(data["version"]),
                features=[str(f) for f in data["features"]],
                mean=[float(x) for x in data["mean"]],
                scale=[float(x) for x in data["scale"]],
                weights=[float(x) for x in data["weights"]],
                bias=float(data["bias"]),
                metrics={str(k): float(v) for k, v in data.get("metrics", {}).items()},
                format=int(data["format"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"malformed model file: {exc}") from exc
        if model.format != FORMAT:
            raise ModelError(f"model format {model.format}, this server reads {FORMAT}")
        if tuple(model.features) != FEATURES:
            raise ModelError(f"model features {model.features} are not {list(FEATURES)}")
        numbers = [*model.mean, *model.weights, model.bias]
        sizes = {len(model.mean), len(model.scale), len(model.weights)}
        if sizes != {len(FEATURES)} or not all(map(math.isfinite, numbers)):
            raise ModelError("model arrays have the wrong size or non-finite numbers")
        if any(not s > 0 for s in model.scale):
            raise ModelError("model scales must be positive")
        return model


def load(path: Path) -> Model:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    return Model.loads(raw)


class ModelHolder:
    """The model in `path`, reloaded when the file's mtime or size changes (checked at
    most once per RELOAD_CHECK_SECONDS, by the request that finds the check due). A file
    that fails to load keeps the previous model; none ever loaded: `current()` is None."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._model: Model | None = None
        self._stamp: tuple[int, int] | None = None
        self._checked = -math.inf

    def current(self) -> Model | None:
        now = time.monotonic()
        if now - self._checked >= RELOAD_CHECK_SECONDS:
            self._checked = now
            self._refresh()
        return self._model

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            if self._model is not None:
                log.warning("model file %s is gone: ranked feeds fall back", self.path)
            self._model, self._stamp = None, None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._model = load(self.path)
        except ModelError as exc:
            log.warning("model file %s not loaded (%s); keeping the previous one", self.path, exc)
            return
        log.info("ranking model %s loaded from %s", self._model.version, self.path)
