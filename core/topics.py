"""Kafka topic names. Every producer and consumer takes its topic names from here.

KAFKA_TOPIC_PREFIX namespaces all topics (several environments, or test runs, sharing
one cluster).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.settings import Settings

POSTS = "posts"  # post created / deleted, keyed by author id
FOLLOWS = "follows"  # follow / unfollow, keyed by follower id
ENGAGEMENTS = "engagements"  # likes, replies, reposts, keyed by post id
PUSH = "push"  # push jobs for offline users, keyed by recipient id
DEAD_LETTERS = "dead-letters"  # events that failed processing, with the reason

ALL = (POSTS, FOLLOWS, ENGAGEMENTS, PUSH, DEAD_LETTERS)


@dataclass(frozen=True, slots=True)
class Topics:
    posts: str
    follows: str
    engagements: str
    push: str
    dead_letters: str

    @classmethod
    def for_settings(cls, settings: Settings) -> Topics:
        return cls.with_prefix(settings.kafka_topic_prefix)

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        return cls(*(prefix + name for name in ALL))

    def all(self) -> tuple[str, ...]:
        return (self.posts, self.follows, self.engagements, self.push, self.dead_letters)
