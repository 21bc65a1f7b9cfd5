import orjson
import pytest

from core.events import (
    Engagement,
    EventDecodeError,
    FollowCreated,
    PostCreated,
    PostDeleted,
    PushJob,
    decode,
    encode,
)

BIG_ID = 2**63 - 1  # must survive the round trip exactly (no float on the way)


@pytest.mark.parametrize(
    "event",
    [
        PostCreated(post_id=BIG_ID, author_id=7, created_at_ms=1_700_000_000_000),
        PostCreated(post_id=1, author_id=2, created_at_ms=3, reply_to=BIG_ID, repost_of=None),
        PostDeleted(post_id=5, author_id=6),
        FollowCreated(follower_id=1, followee_id=2),
        Engagement(kind="like", actor_id=1, recipient_id=2, post_id=3),
        PushJob(kind="alert", user_id=1, created_at_ms=2, text="héllo 👋", post_id=None),
    ],
)
def test_round_trip_is_exact(event: object) -> None:
    assert decode(encode(event)) == event  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"type": "nope", "v": 1}', "unknown event type"),
        (b'{"type": "post.deleted", "v": 2, "post_id": 1, "author_id": 2}', "unsupported version"),
        (b'{"type": "post.deleted", "v": 1, "post_id": 1}', "missing field 'author_id'"),
        (b'{"type": "post.deleted", "v": 1, "post_id": "1", "author_id": 2}', "wrong type"),
        (b'{"type": "post.deleted", "v": 1, "post_id": true, "author_id": 2}', "wrong type"),
        (b'{"type": "post.deleted", "v": 1, "post_id": 1.5, "author_id": 2}', "wrong type"),
        (
            b'{"type": "engagement", "v": 1, "kind": "hack", "actor_id": 1, "recipient_id": 2}',
            "wrong type",
        ),
    ],
)
def test_malformed_events_are_rejected(raw: bytes, reason: str) -> None:
    with pytest.raises(EventDecodeError, match=reason):
        decode(raw)


def test_out_of_range_integer_is_rejected() -> None:
    raw = orjson.dumps({"type": "post.deleted", "v": 1, "post_id": 1, "author_id": 2})
    raw = raw.replace(b'"post_id":1', b'"post_id":18446744073709551616')
    with pytest.raises(EventDecodeError):
        decode(raw)
