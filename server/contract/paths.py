"""Every operation of the HTTP API, declared once: its path, what it takes (body and
query models, path parameters), what it answers (response models, error codes) and the
words a reader needs. server/http/openapi.py renders this table; tests/server/test_openapi.py
checks it against the routes the app registers and the answers the server gives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.contract.accounts import (
    FollowState,
    Profile,
    SignedIn,
    SignedUp,
    SignIn,
    SignUp,
    UserPage,
)
from server.contract.devices import DeviceList, DeviceRegistered, NewDevice, VapidKey
from server.contract.errors import Error
from server.contract.media import Media, MediaPatch, MediaUpload, NewMedia
from server.contract.ops import ClientConfig, Health, OpsStats, Readiness
from server.contract.posts import (
    FeedPage,
    LikeState,
    NewPost,
    NotificationPage,
    Post,
    PostCreated,
    PostDelta,
    PostPage,
)
from server.contract.queries import DeltaQuery, FeedQuery, Page, Query, SearchQuery

Code = str | tuple[int, str]  # a code, or (status, code) where the code has two statuses


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    description: str
    model: Any = None  # a response model (JSON); None: `media_type` text, or no body
    media_type: str | None = None
    example: Any = None


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    tag: str
    summary: str
    answers: tuple[Answer, ...]
    errors: tuple[Code, ...] = ()  # besides the bearer-auth ones of non-public operations
    public: bool = False
    operator: bool = False  # the operator token instead of a user's
    body: Any = None  # the request body model
    query: type[Query] | None = None
    params: tuple[str, ...] = ()  # path and header parameters, by component name
    description: str | None = None


POST_MISSING = (404, "post_not_found")
MEDIA_MISSING = (404, "media_not_found")
BODY = (
    "invalid_json",
    "body_timeout",
    "body_too_large",
    "invalid_body",
    "unknown_field",
    "missing_field",
)
PAGE = ("invalid_field", "invalid_cursor")
TEXT = ("invalid_characters", "too_long")
BY_ID = ("not_found", POST_MISSING)
FOLLOW = ("not_found", "user_not_found", "self_follow")


def ok(status: int, model: Any, description: str) -> tuple[Answer, ...]:
    return (Answer(status, description, model),)


def text(media_type: str, description: str) -> tuple[Answer, ...]:
    return (Answer(200, description, media_type=media_type),)


GONE = (Answer(204, "Deleted."),)

# One operation per entry, positional fields first: a table is read down, not across.
# fmt: off
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post", "/v1/users", "accounts", "Sign up",
        ok(201, SignedUp, "Account created; the token is ready to use."),
        (*BODY, "invalid_field", "invalid_handle", "invalid_password", *TEXT, "handle_taken"),
        public=True, body=SignUp,
    ),
    Operation(
        "post", "/v1/sessions", "accounts", "Sign in",
        ok(200, SignedIn, "Signed in."),
        (*BODY, "invalid_field", "invalid_credentials"),
        public=True, body=SignIn,
        description="An unknown handle and a wrong password get the same answer.",
    ),
    Operation(
        "get", "/v1/users/{handle}", "users", "A profile with its counts",
        ok(200, Profile, "The profile."), ("user_not_found",), params=("Handle",),
    ),
    Operation(
        "get", "/v1/users/{handle}/posts", "users", "A user's posts, newest first",
        ok(200, PostPage, "A page of posts."), ("user_not_found", *PAGE),
        query=Page, params=("Handle",),
    ),
    Operation(
        "get", "/v1/users/{handle}/followers", "users",
        "Who follows a user, newest accounts first",
        ok(200, UserPage, "A page of accounts."), ("user_not_found", *PAGE),
        query=Page, params=("Handle",),
    ),
    Operation(
        "get", "/v1/users/{handle}/following", "users",
        "Whom a user follows, newest accounts first",
        ok(200, UserPage, "A page of accounts."), ("user_not_found", *PAGE),
        query=Page, params=("Handle",),
    ),
    Operation(
        "post", "/v1/users/{user_id}/follow", "users", "Follow (idempotent)",
        ok(200, FollowState, "Following."), FOLLOW, params=("UserId",),
    ),
    Operation(
        "delete", "/v1/users/{user_id}/follow", "users", "Unfollow (idempotent)",
        ok(200, FollowState, "Not following."), FOLLOW, params=("UserId",),
    ),
    Operation(
        "post", "/v1/posts", "posts", "Publish a post",
        ok(201, PostCreated, "Accepted; fan-out to followers is queued."),
        (
            *BODY, "invalid_field", "empty_text", (422, "post_not_found"),
            (422, "media_not_found"), "media_not_ready", "media_failed", (422, "media_attached"),
            "duplicate_media", *TEXT, "rate_limited",
        ),
        body=NewPost, params=("IdempotencyKey",),
    ),
    Operation(
        "get", "/v1/posts/{id}", "posts", "Read a post",
        ok(200, Post, "The post."), BY_ID, params=("PostId",),
    ),
    Operation(
        "delete", "/v1/posts/{id}", "posts", "Delete a post (author only)",
        GONE, (*BY_ID, "not_author"), params=("PostId",),
    ),
    Operation(
        "post", "/v1/posts/{id}/like", "posts", "Like (idempotent)",
        ok(200, LikeState, "Liked; `likes` is the current count."), BY_ID, params=("PostId",),
    ),
    Operation(
        "delete", "/v1/posts/{id}/like", "posts", "Unlike (idempotent)",
        ok(200, LikeState, "Not liked; `likes` is the current count."), BY_ID,
        params=("PostId",),
    ),
    Operation(
        "get", "/v1/posts/{id}/replies", "posts", "Replies to a post, oldest first",
        ok(200, PostPage, "A page of replies."), (*BY_ID, *PAGE),
        query=Page, params=("PostId",),
    ),
    Operation(
        "get", "/v1/feed", "feed", "Home timeline, newest first or ranked",
        ok(200, FeedPage, "A page of the home timeline (own posts included)."),
        (*PAGE, "invalid_algorithm"), query=FeedQuery,
        description="`algorithm=ranked` re-ranks the newest few hundred posts of the home "
        "timeline with a learned model: the first page snapshots the ranked list for later "
        "pages (their cursor pages through it: no duplicate, no gap; deleted posts and "
        "unfollowed authors are left out), each post carries a `reason`, and a new first "
        "page ranks again. Ranking never fails a request: without it the chronological "
        "page is served, marked `algorithm: chronological`.",
    ),
    Operation(
        "get", "/v1/feed/delta", "feed", "Home timeline posts newer than a post",
        ok(200, PostDelta, "The newest posts after `since`, newest first."),
        ("missing_field", "invalid_field"), query=DeltaQuery,
    ),
    Operation(
        "get", "/v1/search", "feed", "Keyword search over posts, newest first",
        ok(200, PostPage, "A page of matching posts."), ("missing_field", *PAGE),
        query=SearchQuery,
    ),
    Operation(
        "get", "/v1/notifications", "feed",
        "Likes, replies, reposts, mentions and new followers, newest first",
        ok(200, NotificationPage, "A page of notifications."), PAGE, query=Page,
    ),
    Operation(
        "post", "/v1/devices", "push", "Register a push device",
        ok(201, DeviceRegistered, "Registered (or refreshed and moved to you)."),
        (*BODY, "invalid_field", "endpoint_refused", "too_many_devices"), body=NewDevice,
    ),
    Operation(
        "get", "/v1/devices", "push", "My push devices", ok(200, DeviceList, "Newest first."),
    ),
    Operation(
        "delete", "/v1/devices/{id}", "push", "Delete one of my push devices",
        (Answer(204, "Deleted; nothing more is pushed to it."),),
        ("not_found", "device_not_found"), params=("DeviceId",),
    ),
    Operation(
        "post", "/v1/media", "media",
        "Start an image upload (a pre-signed PUT straight to the object store)",
        ok(201, MediaUpload, "PUT the bytes to `upload.url` with `upload.headers`."),
        (
            *BODY, "invalid_field", "unsupported_content_type", "media_too_large",
            "media_quota_exceeded", "rate_limited",
        ),
        body=NewMedia,
        description="The URL's signature covers `Content-Type` and `Content-Length`: the "
        "store refuses any other type or size, and any PUT after `expires_at`. Once the "
        "bytes are there, processing (off the request path) checks they are the image they "
        "claim to be, refuses decompression bombs and images over `MEDIA_MAX_PIXELS`, "
        "strips every metadata (EXIF, GPS), and stores the image and a 640 px wide preview: "
        "poll `GET /v1/media/{id}` until `status` is `ready` (or `failed`, with a `reason`).",
    ),
    Operation(
        "get", "/v1/media/{id}", "media", "An upload's status, sizes and URLs",
        ok(200, Media, "The media."), ("not_found", MEDIA_MISSING), params=("MediaId",),
        description="The owner sees their media in every state; anyone signed in sees media "
        "attached to a post that is not deleted.",
    ),
    Operation(
        "patch", "/v1/media/{id}", "media", "Set the alt text of my media",
        ok(200, Media, "The media, with its alt text."),
        (*BODY, "invalid_field", *TEXT, "not_found", MEDIA_MISSING, (409, "media_attached")),
        body=MediaPatch, params=("MediaId",),
        description="Only before the media is attached: a post, media included, never "
        "changes once made (`409 media_attached`).",
    ),
    Operation(
        "get", "/v1/push/vapid-public-key", "push",
        "The VAPID public key for Web Push subscriptions",
        ok(200, VapidKey, "The key; stable for the deployment."), public=True,
    ),
    Operation(
        "get", "/v1/openapi.json", "ops", "This document",
        (Answer(200, "OpenAPI 3.1.", media_type="application/json"),), public=True,
    ),
    Operation(
        "get", "/healthz", "ops", "Alive", ok(200, Health, "The process is up."), public=True,
    ),
    Operation(
        "get", "/readyz", "ops", "Dependencies reachable",
        (
            Answer(200, "Every required dependency answers.", Readiness),
            Answer(503, "A required dependency (Postgres) is down.", Readiness),
        ),
        public=True,
    ),
    Operation(
        "get", "/metrics", "ops", "Prometheus metrics",
        text("text/plain", "Prometheus text exposition format."), public=True,
    ),
    Operation(
        "get", "/v1/ops/stats", "ops",
        "Live stats of every node of every service (the ops dashboard's data)",
        (
            Answer(200, "Every live node, and totals.", OpsStats),
            Answer(
                503,
                "Redis (where nodes report) is unreachable: `error.code` is "
                "`stats_unavailable`; retry.",
                Error,
            ),
        ),
        ("unauthorized", "invalid_token"), public=True, operator=True,
        description="Needs the operator token (`OPERATOR_TOKEN`), never a user token.",
    ),
    Operation(
        "get", "/ops", "ops", "The ops dashboard",
        text("text/html", "The dashboard's page; it asks for the operator token."), public=True,
    ),
    Operation(
        "get", "/", "ops", "The web client",
        text("text/html", "The web client's page; its files are under `/static/`."),
        public=True,
    ),
    Operation(
        "get", "/sw.js", "ops", "The web client's service worker",
        text("text/javascript", "Served at the root so its scope is the whole site."),
        public=True,
    ),
    Operation(
        "get", "/client-config.json", "ops", "Where the web client connects for live updates",
        (
            Answer(
                200,
                "`PUBLIC_STREAM_URL`, or the page's host on `GATEWAY_PORT`.",
                ClientConfig,
                example={"stream_url": "http://127.0.0.1:8081"},
            ),
        ),
        ("invalid_host",), public=True,
    ),
)
# fmt: on
