"""What the model sees of a (reader, post) pair: raw signals in, a fixed feature vector
out. The training simulation and the server build vectors with this one function, so a
model is always scored on the features it was trained on (names travel in its file)."""

from __future__ import annotations

import math
from dataclasses import dataclass

AFFINITY_HALF_LIFE_DAYS = 7.0
VELOCITY_PRIOR_HOURS = 2.0  # a brand-new post's few likes are not yet a high velocity
RECENCY_HOURS = 24.0

FEATURES: tuple[str, ...] = (
    "affinity",  # log1p of the reader's decayed likes/replies/reposts of the author
    "social_proof",  # log1p of the reader's followees who liked or reposted it
    "velocity",  # log1p of engagements per hour of age
    "recency",  # exp(-age / RECENCY_HOURS)
    "is_reply",
    "is_repost",
    "has_media",
    "seen",  # the reader was shown it on an earlier ranked page
)


@dataclass(frozen=True, slots=True)
class Signals:
    affinity: float  # decayed engagement count, reader -> author
    followee_engagers: int
    likes: int
    reposts: int
    replies: int
    age_hours: float
    is_reply: bool
    is_repost: bool
    has_media: bool
    seen: bool


def vector(s: Signals) -> list[float]:
    return row(
        s.affinity,
        s.followee_engagers,
        s.likes + 2 * s.reposts + s.replies,
        s.age_hours,
        s.is_reply,
        s.is_repost,
        s.has_media,
        s.seen,
    )


def row(
    affinity: float,
    followee_engagers: int,
    engagements: int,
    age_hours: float,
    is_reply: bool,
    is_repost: bool,
    has_media: bool,
    seen: bool,
) -> list[float]:
    """vector() without a Signals object: the server's scorer builds a few hundred rows a
    page (ranking/scorer.py); `engagements` is likes + 2 * reposts + replies."""
    age = max(0.0, age_hours)
    return [
        math.log1p(max(0.0, affinity)),
        math.log1p(followee_engagers),
        math.log1p(engagements / (age + VELOCITY_PRIOR_HOURS)),
        math.exp(-age / RECENCY_HOURS),
        float(is_reply),
        float(is_repost),
        float(has_media),
        float(seen),
    ]


# Engagement weights for affinity: a reply or a repost says more than a like.
ENGAGEMENT_WEIGHT = {"like": 1.0, "reply": 2.0, "repost": 2.0}
