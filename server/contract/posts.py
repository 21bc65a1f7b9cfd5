"""Posts: what a client sends to publish one, and every view of a post it reads back
(a post, a feed post, pages of them, likes). Responses are TypedDicts: handlers build
plain dicts (core/postview.py, the feed's cached bytes) and these describe them."""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict

from server.contract.fields import (
    EXAMPLE_ID,
    EXAMPLE_TIME,
    EXAMPLE_USER_ID,
    POST_MAX_CHARS,
    Body,
    Count,
    Handle,
    Id,
    IdempotencyKey,
    IdInput,
    PostText,
    Refusal,
    Timestamp,
)
from server.contract.queries import Cursor

MAX_MEDIA = 4
CLOSED = ConfigDict(extra="forbid")
AUTHOR: dict[str, Any] = {"id": EXAMPLE_USER_ID, "handle": "ada_l", "display_name": "Ada"}


class NewPost(Body):
    """POST /v1/posts."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "hello @ada_l", "idempotency_key": "k-42"}]}
    )

    text: PostText = Field(
        description=f"1-{POST_MAX_CHARS} characters (code points) after NFC normalisation "
        "and trimming; newlines allowed, other control characters not. `@handle` mentions "
        "notify (at most 10 per post)."
    )
    reply_to: IdInput | None = Field(None, description="A live post this answers.")
    repost_of: IdInput | None = Field(None, description="A live post this reposts.")
    media_ids: Annotated[list[IdInput] | None, Field(max_length=MAX_MEDIA), Refusal()] = Field(
        None, description="Ready media of yours, on no other post, in display order."
    )
    idempotency_key: IdempotencyKey | None = Field(
        None, description="Same as the `Idempotency-Key` header (the body wins)."
    )


@with_config(ConfigDict(extra="forbid", json_schema_extra={"examples": [AUTHOR]}))
class Author(TypedDict):
    id: Id
    handle: Handle
    display_name: str


@with_config(CLOSED)
class PostCounts(TypedDict):
    likes: Count
    reposts: Count
    replies: Count


@with_config(CLOSED)
class PostMedia(TypedDict):
    """An image attached to a post, ready to show."""

    id: Id
    type: Literal["image"]
    url: str
    preview_url: Annotated[str | None, Field(description="At most 640 px wide.")]
    width: Annotated[int, Field(ge=1)]
    height: Annotated[int, Field(ge=1)]
    blurhash: Annotated[str | None, Field(description="A placeholder while it loads.")]
    alt_text: str


EXAMPLE_POST: dict[str, Any] = {
    "id": EXAMPLE_ID,
    "author": AUTHOR,
    "text": "hello world",
    "created_at": EXAMPLE_TIME,
    "reply_to": None,
    "repost_of": None,
    "media_ids": [],
    "media": [],
    "counts": {"likes": 2, "reposts": 0, "replies": 1},
}


@with_config(ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_POST]}))
class Post(TypedDict):
    id: Id
    author: Author
    text: Annotated[str, Field(min_length=1, max_length=POST_MAX_CHARS)]
    created_at: Timestamp
    reply_to: Id | None
    repost_of: Id | None
    media_ids: Annotated[list[Id], Field(max_length=MAX_MEDIA)]
    media: Annotated[list[PostMedia], Field(max_length=MAX_MEDIA)]
    counts: PostCounts


@with_config(CLOSED)
class FeedPost(Post):
    reason: NotRequired[
        Annotated[
            str,
            Field(
                min_length=1,
                description='Why a ranked page shows it, for example "liked by @ana and 3 '
                'others you follow". Only on ranked pages.',
            ),
        ]
    ]


NextCursor = Annotated[
    Cursor | None,
    Field(description="Pass as `cursor` for the next page; null on the last page."),
]


@with_config(CLOSED)
class PostPage(TypedDict):
    posts: list[Post]
    next_cursor: NextCursor
    has_more: bool


@with_config(CLOSED)
class FeedPage(TypedDict):
    posts: list[FeedPost]
    next_cursor: Annotated[
        Cursor | None,
        Field(
            description="Pass as `cursor` (with the same `algorithm`) for the next page; "
            "null on the last page."
        ),
    ]
    has_more: bool
    algorithm: NotRequired[
        Annotated[
            Literal["chronological", "ranked"],
            Field(
                description="Which order served this page; present when the request named "
                "an `algorithm`. `ranked` asked but `chronological` here: the ranker was "
                "unavailable, slow or had no model, and this is the chronological page."
            ),
        ]
    ]


@with_config(CLOSED)
class PostDelta(TypedDict):
    posts: list[Post]
    has_more: Annotated[
        bool, Field(description="More new posts than `limit`: reload the feed instead.")
    ]


@with_config(
    ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "post_id": EXAMPLE_ID,
                    "created_at": EXAMPLE_TIME,
                    "author_id": EXAMPLE_USER_ID,
                    "fan_out_status": "queued",
                }
            ]
        },
    )
)
class PostCreated(TypedDict):
    post_id: Id
    created_at: Timestamp
    author_id: Id
    fan_out_status: Literal["queued"]


@with_config(CLOSED)
class LikeState(TypedDict):
    post_id: Id
    liked: bool
    likes: Annotated[int, Field(ge=0, description="likes now")]


@with_config(CLOSED)
class Notification(TypedDict):
    id: Id
    kind: Literal["like", "reply", "repost", "mention", "follow"]
    actor: Author
    post_id: Annotated[
        Id | None,
        Field(description="The post concerned (for a repost, the original); null for `follow`."),
    ]
    created_at: Timestamp


@with_config(CLOSED)
class NotificationPage(TypedDict):
    notifications: list[Notification]
    next_cursor: NextCursor
    has_more: bool
