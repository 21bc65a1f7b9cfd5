"""Accounts and the social graph: sign-up, sign-in, profiles, follows, follower lists."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict

from server.contract.fields import (
    DISPLAY_NAME_MAX,
    Body,
    Count,
    DisplayName,
    Handle,
    Id,
    Password,
    Timestamp,
)
from server.contract.posts import NextCursor

CLOSED = ConfigDict(extra="forbid")


class SignUp(Body):
    """POST /v1/users."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"handle": "ada_l", "password": "correct horse", "display_name": "Ada"}]
        }
    )

    handle: Handle = Field(description="Unique case-insensitively, displayed as typed.")
    password: Password
    display_name: DisplayName | None = Field(
        None,
        description=f"NFC-normalised and trimmed, at most {DISPLAY_NAME_MAX} characters, "
        "no control characters; empty or absent: the handle.",
    )


class SignIn(Body):
    """POST /v1/sessions: any strings (a wrong one is just a wrong password)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"handle": "ada_l", "password": "correct horse"}]}
    )

    handle: str = Field(description="Matched case-insensitively.")
    password: str


@with_config(CLOSED)
class SignedUp(TypedDict):
    user_id: Id
    handle: Handle
    token: str


@with_config(CLOSED)
class SignedIn(TypedDict):
    user_id: Id
    token: str


@with_config(CLOSED)
class ProfileCounts(TypedDict):
    followers: Count
    following: Count
    posts: Annotated[int, Field(ge=0, description="live posts")]


@with_config(CLOSED)
class Profile(TypedDict):
    id: Id
    handle: Handle
    display_name: str
    created_at: Timestamp
    counts: ProfileCounts
    followed_by_me: bool


@with_config(CLOSED)
class Follower(TypedDict):
    id: Id
    handle: Handle
    display_name: str
    since: Annotated[Timestamp, Field(description="When the follow began.")]


@with_config(CLOSED)
class UserPage(TypedDict):
    users: list[Follower]
    next_cursor: NextCursor
    has_more: bool


@with_config(CLOSED)
class FollowState(TypedDict):
    user_id: Id
    following: bool
    followers: Annotated[int, Field(ge=0, description="the target's followers now")]
