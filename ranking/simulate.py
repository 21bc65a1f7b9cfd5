"""A seeded simulation of a small network, the training data of the shipped model.

Users have hidden interests (two favourite topics of TOPICS); each writes posts on one
topic of their own, follows FOLLOWS others and, in sessions spread over HOURS, is shown
the SHOWN newest posts of the authors they follow (the chronological feed). They engage
with a post with a probability that grows with their interest in its topic, its hidden
quality and its media, and shrinks with its age, when it is a reply and when they saw it
before. Engagements move the same signals the feature store keeps (affinity, counters,
followees who engaged, seen), and each shown post is an impression labelled by whether
its reader engaged. For evaluation every candidate of a session gets a label drawn the
same way (who would have engaged had it been shown), so orders can be compared offline.
Same seed, same data: random.Random and nothing else.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ranking.features import AFFINITY_HALF_LIFE_DAYS, ENGAGEMENT_WEIGHT, Signals, vector

TOPICS = 8


@dataclass(frozen=True, slots=True)
class Config:
    seed: int = 7
    users: int = 200
    follows: int = 25
    hours: int = 48
    sessions_per_hour: int = 40
    shown: int = 20
    candidates: int = 120
    post_rate: float = 0.3  # posts per user per hour


@dataclass(slots=True)
class Post:
    id: int
    author: int
    hour: float
    topic: int
    quality: float
    is_reply: bool
    is_repost: bool
    has_media: bool
    likes: int = 0
    reposts: int = 0
    replies: int = 0
    engagers: set[int] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Session:
    """One feed opening: every candidate, newest first (the chronological order)."""

    hour: float
    reader: int
    rows: list[list[float]]
    labels: list[int]  # would the reader engage (drawn for every candidate)
    shown: int  # the first `shown` candidates were impressions


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


class World:
    def __init__(self, config: Config) -> None:
        self.c = config
        self.rng = random.Random(config.seed)  # noqa: S311 - a simulation, not a secret
        rng = self.rng
        self.interest: list[list[float]] = []
        for _ in range(config.users):
            weights = [0.05] * TOPICS
            for topic in rng.sample(range(TOPICS), 2):
                weights[topic] = rng.uniform(0.6, 1.0)
            self.interest.append(weights)
        self.topic = [rng.randrange(TOPICS) for _ in range(config.users)]
        self.followees = [
            set(rng.sample([a for a in range(config.users) if a != u], config.follows))
            for u in range(config.users)
        ]
        self.posts: list[Post] = []
        self.by_author: list[list[Post]] = [[] for _ in range(config.users)]
        self.affinity: dict[tuple[int, int], tuple[float, float]] = {}  # (value, hour)
        self.seen: set[tuple[int, int]] = set()
        self.engaged: set[tuple[int, int]] = set()

    def run(self) -> list[Session]:
        sessions = []
        for hour in range(self.c.hours):
            for author in range(self.c.users):
                if self.rng.random() < self.c.post_rate:
                    self._write(author, hour + self.rng.random())
            for _ in range(self.c.sessions_per_hour):
                reader = self.rng.randrange(self.c.users)
                sessions.append(self._session(reader, hour + 1.0))
        return sessions

    def _write(self, author: int, hour: float) -> None:
        rng = self.rng
        topic = self.topic[author] if rng.random() < 0.8 else rng.randrange(TOPICS)
        post = Post(
            id=len(self.posts),
            author=author,
            hour=hour,
            topic=topic,
            quality=rng.gauss(0.0, 1.0),
            is_reply=rng.random() < 0.15,
            is_repost=rng.random() < 0.1,
            has_media=rng.random() < 0.3,
        )
        self.posts.append(post)
        self.by_author[author].append(post)

    def _candidates(self, reader: int, hour: float) -> list[Post]:
        recent = [
            p
            for a in self.followees[reader]
            for p in self.by_author[a][-self.c.candidates :]
            if p.hour < hour
        ]
        recent.sort(key=lambda p: p.hour, reverse=True)
        return recent[: self.c.candidates]

    def _affinity(self, reader: int, author: int, hour: float) -> float:
        value, at = self.affinity.get((reader, author), (0.0, hour))
        decay: float = 0.5 ** ((hour - at) / (AFFINITY_HALF_LIFE_DAYS * 24))
        return value * decay

    def _signals(self, reader: int, post: Post, hour: float) -> Signals:
        return Signals(
            affinity=self._affinity(reader, post.author, hour),
            followee_engagers=len(post.engagers & self.followees[reader]),
            likes=post.likes,
            reposts=post.reposts,
            replies=post.replies,
            age_hours=hour - post.hour,
            is_reply=post.is_reply,
            is_repost=post.is_repost,
            has_media=post.has_media,
            seen=(reader, post.id) in self.seen,
        )

    def _would_engage(self, reader: int, post: Post, hour: float) -> bool:
        if (reader, post.id) in self.engaged:
            return False
        z = (
            -4.2
            + 4.5 * self.interest[reader][post.topic]
            + 0.6 * post.quality
            + 0.4 * post.has_media
            - 0.6 * post.is_reply
            - 1.5 * ((reader, post.id) in self.seen)
            - (hour - post.hour) / 12.0
        )
        return self.rng.random() < _sigmoid(z)

    def _session(self, reader: int, hour: float) -> Session:
        candidates = self._candidates(reader, hour)
        rows = [vector(self._signals(reader, p, hour)) for p in candidates]
        labels = [int(self._would_engage(reader, p, hour)) for p in candidates]
        shown = min(self.c.shown, len(candidates))
        for post, label in zip(candidates[:shown], labels, strict=False):
            self.seen.add((reader, post.id))
            if label:
                self._engage(reader, post, hour)
        return Session(hour, reader, rows, labels, shown)

    def _engage(self, reader: int, post: Post, hour: float) -> None:
        draw = self.rng.random()
        kind = "like" if draw < 0.8 else ("repost" if draw < 0.9 else "reply")
        self.engaged.add((reader, post.id))
        if kind == "like":
            post.likes += 1
        elif kind == "repost":
            post.reposts += 1
        else:
            post.replies += 1
        if kind != "reply":
            post.engagers.add(reader)
        value = self._affinity(reader, post.author, hour) + ENGAGEMENT_WEIGHT[kind]
        self.affinity[(reader, post.author)] = (value, hour)


def simulate(config: Config) -> list[Session]:
    return World(config).run()
