"""GET /v1/openapi.json: the OpenAPI 3.1 description of this server's HTTP API.

The document is plain data built once at import (no I/O) and served as the same bytes on
every request. Limits come from server/validation.py and the handlers' own constants, so
they cannot drift apart; tests/test_openapi.py checks routes and real responses against it.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from server.handlers.devices import APNS_TOKEN, FCM_TOKEN, MAX_DEVICES
from server.handlers.feed import ALGORITHMS, MAX_QUERY
from server.handlers.media import CONTENT_TYPES, MAX_ALT_TEXT
from server.handlers.posts import MAX_MEDIA, RATE_LIMIT_POSTS
from server.validation import (
    BODY_SECONDS,
    DISPLAY_NAME_MAX,
    HANDLE,
    IDEMPOTENCY_KEY,
    MAX_ID,
    POST_MAX_CHARS,
)

Json = dict[str, Any]

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
DELTA_DEFAULT_LIMIT = 100
DELTA_MAX_LIMIT = 200
PASSWORD_MIN, PASSWORD_MAX = 8, 128
MAX_CURSOR = 200

# Every machine-readable error code, by status, with what it means. Operations list the
# codes they can answer; each response's schema then admits exactly those codes.
ERROR_CODES: dict[int, dict[str, str]] = {
    400: {
        "invalid_json": "the body is empty, not JSON or UTF-8, or not as `Content-Encoding` says",
        "invalid_host": "the `Host` header is not a host[:port] to derive the stream URL from",
        "invalid_algorithm": "`algorithm` is neither `chronological` nor `ranked`",
    },
    401: {
        "unauthorized": "no `Authorization` header (`WWW-Authenticate: Bearer`)",
        "invalid_token": "not `Bearer <token>`, or the token is malformed or forged",
        "token_expired": "the token has expired; sign in again",
        "invalid_credentials": "unknown handle or wrong password (indistinguishable)",
    },
    403: {"not_author": "only the author can do this"},
    404: {
        "not_found": "no such route, or the path id is not a valid id",
        "post_not_found": "no such post, or it was deleted",
        "user_not_found": "no such user",
        "device_not_found": "no such device of yours",
        "media_not_found": "no such media of yours, nor attached to a post you can see",
    },
    405: {"method_not_allowed": "the path exists but not with this method (see `Allow`)"},
    409: {
        "handle_taken": "the handle is taken (handles are unique case-insensitively)",
        "too_many_devices": f"at most {MAX_DEVICES} push devices per user; delete one first",
        "media_quota_exceeded": "your media would pass your storage quota (`MEDIA_QUOTA_BYTES`)",
    },
    408: {"body_timeout": f"the body did not arrive within {BODY_SECONDS:g} s (connection closed)"},
    413: {
        "body_too_large": "the body is larger than 16 KiB",
        "media_too_large": "the declared upload `size` is over the limit (`MEDIA_MAX_BYTES`)",
    },
    422: {
        "invalid_body": "the body is JSON but not an object",
        "unknown_field": "the body has a field this operation does not accept",
        "missing_field": "a required field or query parameter is missing",
        "invalid_field": "wrong type, malformed or out-of-range id, or a value out of bounds "
        "(`limit`, `q`, `media_ids`, idempotency key)",
        "invalid_characters": "control characters, surrogates or unassigned code points",
        "too_long": "longer than allowed after NFC normalisation and trimming",
        "empty_text": "`text` is empty after trimming, or only invisible characters "
        "(spaces, zero-width and other format characters)",
        "invalid_handle": "a handle is 1-15 characters of A-Z, a-z, 0-9 and _",
        "invalid_password": f"a password is {PASSWORD_MIN}-{PASSWORD_MAX} characters, no NUL",
        "invalid_cursor": "the cursor is malformed or belongs to another list",
        "post_not_found": "`reply_to` or `repost_of` names a post that does not exist",
        "self_follow": "you cannot follow (or unfollow) yourself",
        "endpoint_refused": "a Web Push endpoint must be https on a public address",
        "unsupported_content_type": "`content_type` is not one of " + ", ".join(CONTENT_TYPES),
        "media_not_found": "a `media_ids` entry is not media of yours",
        "media_not_ready": "a `media_ids` entry is still processing; wait until `ready`",
        "media_failed": "a `media_ids` entry failed processing (see its `reason`)",
        "media_attached": "a `media_ids` entry is attached to another post already",
        "duplicate_media": "`media_ids` names the same media twice",
    },
    429: {
        "rate_limited": f"more than {RATE_LIMIT_POSTS} posts in 3 hours, or more uploads "
        "per hour than `MEDIA_UPLOADS_PER_HOUR`; see `Retry-After`"
    },
}

STATUS_TEXT = {
    400: "Bad request",
    401: "Not signed in",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    409: "Conflict",
    413: "Body too large",
    422: "Invalid input",
    429: "Rate limited",
}

AUTH = ("unauthorized", "invalid_token", "token_expired")
BODY = (
    "invalid_json",
    "body_timeout",
    "body_too_large",
    "invalid_body",
    "unknown_field",
    "missing_field",
)
PAGE = ("invalid_field", "invalid_cursor")

EXAMPLE_ID = "7340032000000000001"
EXAMPLE_USER_ID = "7340031000000000001"
EXAMPLE_TIME = "2025-06-01T12:00:00.000Z"
EXAMPLE_CURSOR = "djE6ZmVlZDo3MzQwMDMyMDAwMDAwMDAwMDAx"


def ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(name: str) -> Json:
    return {"anyOf": [ref(name), {"type": "null"}]}


def obj(properties: Json, *, optional: tuple[str, ...] = (), **extra: Any) -> Json:
    """A closed object: every property required unless named optional, nothing else."""
    required = [name for name in properties if name not in optional]
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
        **extra,
    }


def page_of(item: str, key: str) -> Json:
    return obj(
        {
            key: {"type": "array", "items": ref(item)},
            "next_cursor": {
                "anyOf": [ref("Cursor"), {"type": "null"}],
                "description": "Pass as `cursor` for the next page; null on the last page.",
            },
            "has_more": {"type": "boolean"},
        }
    )


def count(description: str) -> Json:
    return {"type": "integer", "minimum": 0, "description": description}


OPS_WORST: Json = {
    "type": ["number", "null"],
    "minimum": 0,
    "description": "The slowest node's (percentiles of nodes cannot be merged); null "
    "without recent samples.",
}

POST_PROPERTIES: Json = {
    "id": ref("Id"),
    "author": ref("Author"),
    "text": {"type": "string", "minLength": 1, "maxLength": POST_MAX_CHARS},
    "created_at": ref("Timestamp"),
    "reply_to": nullable("Id"),
    "repost_of": nullable("Id"),
    "media_ids": {"type": "array", "items": ref("Id"), "maxItems": MAX_MEDIA},
    "counts": ref("PostCounts"),
}
SCHEMAS: Json = {
    "Id": {
        "type": "string",
        "pattern": "^[0-9]{1,19}$",
        "description": f"A 64-bit id as a decimal string (1 to {MAX_ID}); ids are time-ordered.",
        "examples": [EXAMPLE_ID],
    },
    "IdInput": {
        "description": "An id: a decimal string (preferred: 64-bit integers do not survive "
        "JavaScript), or a JSON integer. Malformed or out of range: 422 `invalid_field`.",
        "anyOf": [ref("Id"), {"type": "integer", "minimum": 1, "maximum": MAX_ID}],
    },
    "Handle": {
        "type": "string",
        "pattern": HANDLE.pattern,
        "description": "Unique case-insensitively, displayed as typed.",
        "examples": ["ada_l"],
    },
    "Timestamp": {
        "type": "string",
        "format": "date-time",
        "description": "ISO-8601 in UTC with milliseconds.",
        "examples": [EXAMPLE_TIME],
    },
    "Cursor": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_CURSOR,
        "description": "Opaque; only valid for the list that returned it.",
        "examples": [EXAMPLE_CURSOR],
    },
    "Author": obj(
        {"id": ref("Id"), "handle": ref("Handle"), "display_name": {"type": "string"}},
        examples=[{"id": EXAMPLE_USER_ID, "handle": "ada_l", "display_name": "Ada"}],
    ),
    "PostCounts": obj(
        {"likes": count("likes"), "reposts": count("reposts"), "replies": count("replies")}
    ),
    "Post": obj(
        POST_PROPERTIES,
        examples=[
            {
                "id": EXAMPLE_ID,
                "author": {"id": EXAMPLE_USER_ID, "handle": "ada_l", "display_name": "Ada"},
                "text": "hello world",
                "created_at": EXAMPLE_TIME,
                "reply_to": None,
                "repost_of": None,
                "media_ids": [],
                "counts": {"likes": 2, "reposts": 0, "replies": 1},
            }
        ],
    ),
    "PostPage": page_of("Post", "posts"),
    "FeedPost": obj(
        {
            **POST_PROPERTIES,
            "reason": {
                "type": "string",
                "minLength": 1,
                "description": 'Why a ranked page shows it, for example "liked by @ana and '
                '3 others you follow" or "you often like posts by @bo". Only on ranked '
                "pages.",
            },
        },
        optional=("reason",),
    ),
    "FeedPage": obj(
        {
            "posts": {"type": "array", "items": ref("FeedPost")},
            "next_cursor": {
                "anyOf": [ref("Cursor"), {"type": "null"}],
                "description": "Pass as `cursor` (with the same `algorithm`) for the next "
                "page; null on the last page.",
            },
            "has_more": {"type": "boolean"},
            "algorithm": {
                "enum": ["chronological", "ranked"],
                "description": "Which order served this page; present when the request "
                "named an `algorithm`. `ranked` asked but `chronological` here: the "
                "ranker was unavailable, slow or had no model, and this is the "
                "chronological page (its cursor continues chronologically).",
            },
        },
        optional=("algorithm",),
    ),
    "PostDelta": obj(
        {
            "posts": {"type": "array", "items": ref("Post")},
            "has_more": {
                "type": "boolean",
                "description": "More new posts than `limit`: reload the feed instead.",
            },
        }
    ),
    "Follower": obj(
        {
            "id": ref("Id"),
            "handle": ref("Handle"),
            "display_name": {"type": "string"},
            "since": {**ref("Timestamp"), "description": "When the follow began."},
        }
    ),
    "UserPage": page_of("Follower", "users"),
    "Notification": obj(
        {
            "id": ref("Id"),
            "kind": {"type": "string", "enum": ["like", "reply", "repost", "mention", "follow"]},
            "actor": ref("Author"),
            "post_id": {
                **nullable("Id"),
                "description": "The post concerned (for a repost, the original); "
                "null for `follow`.",
            },
            "created_at": ref("Timestamp"),
        }
    ),
    "NotificationPage": page_of("Notification", "notifications"),
    "Profile": obj(
        {
            "id": ref("Id"),
            "handle": ref("Handle"),
            "display_name": {"type": "string"},
            "created_at": ref("Timestamp"),
            "counts": obj(
                {
                    "followers": count("followers"),
                    "following": count("accounts followed"),
                    "posts": count("live posts"),
                }
            ),
            "followed_by_me": {"type": "boolean"},
        }
    ),
    "SignUp": obj(
        {
            "handle": ref("Handle"),
            "password": {
                "type": "string",
                "minLength": PASSWORD_MIN,
                "maxLength": PASSWORD_MAX,
                "pattern": "^[^\\x00]*$",
            },
            "display_name": {
                "type": ["string", "null"],
                "maxLength": DISPLAY_NAME_MAX,
                "description": f"NFC-normalised and trimmed, at most {DISPLAY_NAME_MAX} "
                "characters, no control characters; empty or absent: the handle.",
            },
        },
        optional=("display_name",),
        examples=[{"handle": "ada_l", "password": "correct horse", "display_name": "Ada"}],
    ),
    "SignedUp": obj(
        {"user_id": ref("Id"), "handle": ref("Handle"), "token": {"type": "string"}},
    ),
    "SignIn": obj(
        {
            "handle": {"type": "string", "description": "Matched case-insensitively."},
            "password": {"type": "string"},
        },
        examples=[{"handle": "ada_l", "password": "correct horse"}],
    ),
    "SignedIn": obj({"user_id": ref("Id"), "token": {"type": "string"}}),
    "NewPost": obj(
        {
            "text": {
                "type": "string",
                "minLength": 1,
                "maxLength": POST_MAX_CHARS,
                "description": f"1-{POST_MAX_CHARS} characters (code points) after NFC "
                "normalisation and trimming; newlines allowed, other control characters "
                "not. `@handle` mentions notify (at most 10 per post).",
            },
            "reply_to": {**nullable("IdInput"), "description": "A live post this answers."},
            "repost_of": {**nullable("IdInput"), "description": "A live post this reposts."},
            "media_ids": {
                "type": ["array", "null"],
                "items": ref("IdInput"),
                "maxItems": MAX_MEDIA,
            },
            "idempotency_key": {
                "type": ["string", "null"],
                "pattern": IDEMPOTENCY_KEY.pattern,
                "description": "Same as the `Idempotency-Key` header (the body wins).",
            },
        },
        optional=("reply_to", "repost_of", "media_ids", "idempotency_key"),
        examples=[{"text": "hello @ada_l", "idempotency_key": "3f1c9a7e-client-42"}],
    ),
    "PostCreated": obj(
        {
            "post_id": ref("Id"),
            "created_at": ref("Timestamp"),
            "author_id": ref("Id"),
            "fan_out_status": {"const": "queued"},
        },
        examples=[
            {
                "post_id": EXAMPLE_ID,
                "created_at": EXAMPLE_TIME,
                "author_id": EXAMPLE_USER_ID,
                "fan_out_status": "queued",
            }
        ],
    ),
    "LikeState": obj(
        {"post_id": ref("Id"), "liked": {"type": "boolean"}, "likes": count("likes now")}
    ),
    "FollowState": obj(
        {
            "user_id": ref("Id"),
            "following": {"type": "boolean"},
            "followers": count("the target's followers now"),
        }
    ),
    "Error": obj(
        {
            "error": obj(
                {
                    "code": {"type": "string", "description": "Machine-readable; stable."},
                    "message": {"type": "string", "description": "For humans; may change."},
                    "field": {
                        "type": "string",
                        "description": "The body field or query parameter at fault.",
                    },
                },
                optional=("field",),
            )
        },
        examples=[
            {
                "error": {
                    "code": "too_long",
                    "message": "text is longer than 280 characters",
                    "field": "text",
                }
            }
        ],
    ),
    "NewDevice": {
        "description": "An APNs device token (iPhone), an FCM registration token "
        "(Android, sent through FCM HTTP v1), or a browser's `PushSubscription.toJSON()`. "
        "A token or endpoint registered again moves to the caller and is enabled again.",
        "oneOf": [
            obj(
                {
                    "kind": {"const": "apns"},
                    "token": {"type": "string", "pattern": APNS_TOKEN.pattern},
                }
            ),
            obj(
                {
                    "kind": {"const": "fcm"},
                    "token": {
                        "type": "string",
                        "pattern": FCM_TOKEN.pattern,
                        "description": "What FirebaseMessaging.getToken() gives the app; "
                        "case-sensitive, stored as given.",
                    },
                }
            ),
            obj(
                {
                    "kind": {"const": "webpush"},
                    "subscription": obj(
                        {
                            "endpoint": {
                                "type": "string",
                                "maxLength": 2048,
                                "description": "https, on a public address (checked "
                                "again when sending).",
                            },
                            "keys": obj(
                                {
                                    "p256dh": {
                                        "type": "string",
                                        "description": "base64url, 65 bytes",
                                    },
                                    "auth": {
                                        "type": "string",
                                        "description": "base64url, 16 bytes",
                                    },
                                }
                            ),
                            "expirationTime": {"type": ["number", "null"]},
                        },
                        optional=("expirationTime",),
                    ),
                }
            ),
        ],
        "examples": [
            {"kind": "apns", "token": "ab" * 32},
            {"kind": "fcm", "token": "cXnC4bQ7Tk2:APA91bH" + "x1_-" * 36},
        ],
    },
    "Device": obj(
        {
            "id": ref("Id"),
            "kind": {"type": "string", "enum": ["apns", "fcm", "webpush"]},
            "enabled": {"type": "boolean"},
            "disabled_reason": {
                "type": ["string", "null"],
                "description": "Why pushes stopped, e.g. `apns:Unregistered`, "
                "`fcm:UNREGISTERED`, `webpush:http_410`.",
            },
            "created_at": ref("Timestamp"),
            "endpoint": {"type": "string", "description": "Web Push only."},
            "token_suffix": {
                "type": "string",
                "description": "APNs and FCM only: the token's last 8 characters.",
            },
        },
        optional=("endpoint", "token_suffix"),
    ),
    "DeviceRegistered": obj({"device": ref("Device")}),
    "DeviceList": obj({"devices": {"type": "array", "items": ref("Device")}}),
    "NewMedia": obj(
        {
            "content_type": {"enum": list(CONTENT_TYPES)},
            "size": {
                "type": "integer",
                "minimum": 1,
                "description": "The exact byte length that will be uploaded; over "
                "`MEDIA_MAX_BYTES` (8 MiB by default): 413 `media_too_large`.",
            },
        },
        examples=[{"content_type": "image/jpeg", "size": 245_760}],
    ),
    "MediaUpload": obj(
        {
            "media_id": ref("Id"),
            "upload": obj(
                {
                    "url": {"type": "string", "format": "uri"},
                    "method": {"const": "PUT"},
                    "headers": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "Send exactly these (`Content-Type`, "
                        "`Content-Length`): they are signed.",
                    },
                }
            ),
            "expires_at": ref("Timestamp"),
        }
    ),
    "Media": obj(
        {
            "id": ref("Id"),
            "type": {"const": "image"},
            "status": {"enum": ["processing", "ready", "failed"]},
            "reason": {
                "type": "string",
                "description": "Why processing failed: a stable code, a colon, and words "
                "(`upload_missing`, `not_an_image`, `type_mismatch`, `too_many_pixels`, "
                "`undecodable`, `upload_mismatch`, `too_large`). Only when `failed`.",
            },
            "content_type": {"enum": list(CONTENT_TYPES)},
            "size": {"type": "integer", "minimum": 1, "description": "Declared upload size."},
            "url": {
                "type": ["string", "null"],
                "description": "The re-encoded image (no metadata) once `ready`, under "
                "`MEDIA_PUBLIC_URL`.",
            },
            "preview_url": {
                "type": ["string", "null"],
                "description": "At most 640 px wide, once `ready`.",
            },
            "width": {"type": ["integer", "null"], "minimum": 1},
            "height": {"type": ["integer", "null"], "minimum": 1},
            "blurhash": {
                "type": ["string", "null"],
                "description": "A placeholder to show "
                "while the image loads (blurha.sh), once `ready`.",
            },
            "alt_text": {"type": "string", "maxLength": MAX_ALT_TEXT},
            "post_id": {**nullable("Id"), "description": "The post it is attached to."},
            "created_at": ref("Timestamp"),
        },
        optional=("reason",),
    ),
    "MediaPatch": obj(
        {
            "alt_text": {
                "type": "string",
                "maxLength": MAX_ALT_TEXT,
                "description": f"Up to {MAX_ALT_TEXT} characters after NFC normalisation "
                "and trimming; newlines allowed, other control characters not.",
            }
        }
    ),
    "VapidKey": obj(
        {
            "public_key": {
                "type": "string",
                "description": "base64url of the uncompressed P-256 point: "
                "`applicationServerKey` for `pushManager.subscribe()`.",
            }
        }
    ),
    "Health": obj(
        {
            "status": {"const": "ok"},
            "service": {"type": "string"},
            "node": {"type": "string"},
            "uptime_s": {"type": "number", "minimum": 0},
        }
    ),
    "OpsNode": {
        "type": "object",
        "description": "One live node's latest one-second snapshot (`stats:<service>:<node>` "
        "in Redis, 5 s TTL: a node that stops reporting disappears). Fields beyond `node` "
        "and `reported_at_ms` are the service's own; see the README's Ops dashboard section.",
        "properties": {
            "node": {"type": "string"},
            "reported_at_ms": {"type": "integer", "description": "Unix time in ms."},
        },
        "required": ["node", "reported_at_ms"],
    },
    "OpsStats": obj(
        {
            "server_time_ms": {"type": "integer", "description": "Unix time in ms."},
            "services": obj(
                {
                    name: {"type": "array", "items": ref("OpsNode")}
                    for name in ("gateway", "fanout", "push", "server")
                }
            ),
            "totals": obj(
                {
                    "gateway": obj(
                        {
                            "nodes": count("live gateway nodes"),
                            "users_online": count("distinct users per node, summed"),
                            "connections": count("open connections"),
                            "connections_websocket": count("WebSocket connections"),
                            "connections_sse": count("SSE connections"),
                            "delivered_total": count("events queued to connections"),
                            "slow_disconnects_total": count("slow consumers closed"),
                            "latency_p50_ms": OPS_WORST,
                            "latency_p99_ms": OPS_WORST,
                        }
                    ),
                    "fanout": obj(
                        {
                            "nodes": count("live fan-out workers"),
                            "lag_total": count("messages not yet consumed"),
                            "timeline_writes_total": count("post ids added to timelines"),
                            "batches_total": count("follower batches written"),
                            "posts_total": count("posts fanned out"),
                            "dead_letters_total": count("events dead-lettered"),
                            "post_to_timeline_p50_ms": OPS_WORST,
                            "post_to_timeline_p99_ms": OPS_WORST,
                        }
                    ),
                    "push": obj(
                        {
                            "nodes": count("live push workers"),
                            "queue": count("jobs waiting"),
                            "outcomes": {
                                "type": "object",
                                "additionalProperties": {"type": "integer", "minimum": 0},
                                "description": "`provider:result:reason` -> sends.",
                            },
                            "by_provider": {
                                "type": "object",
                                "additionalProperties": {
                                    "type": "object",
                                    "additionalProperties": {"type": "integer", "minimum": 0},
                                },
                                "description": "provider -> result -> sends.",
                            },
                        }
                    ),
                    "server": obj(
                        {
                            "nodes": count("live API servers"),
                            "requests_total": count("HTTP requests answered"),
                            "timeline_cache_hits_total": count("feeds read from Redis"),
                            "timeline_cache_misses_total": count(
                                "feeds rebuilt from or served by Postgres"
                            ),
                            "timeline_cache_hit_rate": {
                                "type": ["number", "null"],
                                "minimum": 0,
                                "maximum": 1,
                            },
                            "feed_read_p50_ms": OPS_WORST,
                            "feed_read_p99_ms": OPS_WORST,
                        }
                    ),
                }
            ),
        }
    ),
    "Readiness": obj(
        {
            "ready": {"type": "boolean"},
            "checks": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "One entry per dependency: `ok`, `timeout` or `down: <why>`.",
                "examples": [{"postgres": "ok", "redis": "ok", "kafka": "ok"}],
            },
        }
    ),
}


def query(name: str, schema: Json, description: str, *, required: bool = False) -> Json:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": description,
    }


def path(name: str, schema: Json, description: str) -> Json:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


def limit_schema(default: int, maximum: int) -> Json:
    return {"type": "integer", "minimum": 1, "maximum": maximum, "default": default}


PARAMETERS: Json = {
    "Limit": query(
        "limit",
        limit_schema(DEFAULT_LIMIT, MAX_LIMIT),
        f"Page size, 1-{MAX_LIMIT}. Otherwise: 422 `invalid_field`.",
    ),
    "Cursor": query("cursor", ref("Cursor"), "`next_cursor` of the previous page."),
    "PostId": path("id", ref("Id"), "A post id; not an id at all: 404 `not_found`."),
    "UserId": path("user_id", ref("Id"), "A user id; not an id at all: 404 `not_found`."),
    "Handle": path("handle", {"type": "string"}, "A handle, any case."),
    "DeviceId": path("id", ref("Id"), "A device id; not an id at all: 404 `not_found`."),
    "MediaId": path("id", ref("Id"), "A media id; not an id at all: 404 `not_found`."),
}


def json_content(schema: Json, example: Any = None) -> Json:
    media: Json = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


def error_response(status: int, codes: tuple[str, ...], headers: Json | None = None) -> Json:
    """The Error shape, admitting exactly `codes`, which the description explains."""
    meanings = ERROR_CODES[status]
    lines = "\n".join(f"- `{code}`: {meanings[code]}" for code in codes)
    schema = {
        "allOf": [
            ref("Error"),
            {"properties": {"error": {"properties": {"code": {"enum": list(codes)}}}}},
        ]
    }
    example = {"error": {"code": codes[0], "message": meanings[codes[0]].replace("`", "")}}
    response: Json = {
        "description": f"{STATUS_TEXT[status]}. `error.code`:\n{lines}",
        "content": json_content(schema, example),
    }
    if headers:
        response["headers"] = headers
    return response


RETRY_AFTER: Json = {
    "Retry-After": {
        "required": True,
        "description": "Seconds until a post (or an upload) is accepted again.",
        "schema": {"type": "integer", "minimum": 1},
    }
}
WWW_AUTHENTICATE: Json = {
    "WWW-Authenticate": {
        "description": '`Bearer`, or `Bearer error="invalid_token"` for a bad token.',
        "schema": {"type": "string"},
    }
}


Code = str | tuple[int, str]  # a code, or (status, code) where the code has two statuses
POST_MISSING = (404, "post_not_found")
MEDIA_MISSING = (404, "media_not_found")
ATTACHED_MEDIA_MISSING = (422, "media_not_found")
REFERENCED_POST_MISSING = (422, "post_not_found")


def status_of(code: Code) -> tuple[int, str]:
    if isinstance(code, tuple):
        return code
    statuses = [status for status, meanings in ERROR_CODES.items() if code in meanings]
    if len(statuses) != 1:
        raise ValueError(f"error code {code!r} needs its status: {statuses}")
    return statuses[0], code


def responses(ok: Json, *codes: Code) -> Json:
    """The success responses plus one error response per status of the codes named."""
    by_status: dict[int, tuple[str, ...]] = {}
    for status, code in sorted(map(status_of, codes), key=lambda sc: sc[0]):
        by_status[status] = (*by_status.get(status, ()), code)
    out = dict(ok)
    for status, found in by_status.items():
        headers = RETRY_AFTER if status == 429 else None
        if status == 401 and set(found) & set(AUTH):  # not sent for invalid_credentials
            headers = WWW_AUTHENTICATE
        out[str(status)] = error_response(status, found, headers)
    return out


def ok(status: int, schema: str, description: str) -> Json:
    return {str(status): {"description": description, "content": json_content(ref(schema))}}


def text(media_type: str, description: str) -> Json:
    return {
        "200": {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}
    }


def op(
    tag: str,
    summary: str,
    answers: Json,
    errors: tuple[Code, ...] = (),
    *,
    public: bool = False,
    params: tuple[Json, ...] = (),
    body: str | None = None,
    description: str | None = None,
) -> Json:
    """One operation; `errors` are the codes it answers besides the bearer-auth ones."""
    operation: Json = {"tags": [tag], "summary": summary}
    if description:
        operation["description"] = description
    if params:
        operation["parameters"] = list(params)
    if body:
        operation["requestBody"] = {"required": True, "content": json_content(ref(body))}
    operation["responses"] = responses(answers, *(errors if public else (*AUTH, *errors)))
    if public:
        operation["security"] = []
    return operation


def param(name: str) -> Json:
    return {"$ref": f"#/components/parameters/{name}"}


HANDLE_PARAM, POST_PARAM, USER_PARAM = param("Handle"), param("PostId"), param("UserId")
PAGED = (param("Limit"), param("Cursor"))
BY_ID = ("not_found", POST_MISSING)
FOLLOW_ERRORS = ("not_found", "user_not_found", "self_follow")
IDEMPOTENCY_HEADER: Json = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY.pattern},
    "description": "1-128 printable ASCII characters. A retry with the same key within "
    "24 hours returns the first result (201) and posts nothing.",
}
ALGORITHM = query(
    "algorithm",
    {"enum": list(ALGORITHMS), "default": "chronological"},
    "`chronological` (the default) or `ranked`. Anything else: 400 `invalid_algorithm`.",
)
SINCE = query("since", ref("Id"), "A post id, usually the newest shown.", required=True)
DELTA_LIMIT = query(
    "limit",
    limit_schema(DELTA_DEFAULT_LIMIT, DELTA_MAX_LIMIT),
    f"At most this many, 1-{DELTA_MAX_LIMIT}. Otherwise: 422 `invalid_field`.",
)
SEARCH_Q = query(
    "q",
    {"type": "string", "minLength": 1, "maxLength": MAX_QUERY},
    f"Words (web search syntax): 1-{MAX_QUERY} characters after trimming, no control "
    "characters. Missing or blank: 422 `missing_field`.",
    required=True,
)
SIGN_UP_ERRORS = (*BODY, "invalid_field", "invalid_handle", "invalid_password")
NEW_POST_ERRORS = (
    *BODY,
    "invalid_field",
    "empty_text",
    REFERENCED_POST_MISSING,
    ATTACHED_MEDIA_MISSING,
    "media_not_ready",
    "media_failed",
    "media_attached",
    "duplicate_media",
)
TEXT_ERRORS = ("invalid_characters", "too_long")

OPS_STATS: Json = {
    "tags": ["ops"],
    "summary": "Live stats of every node of every service (the ops dashboard's data)",
    "description": "Needs the operator token (`OPERATOR_TOKEN`), never a user token.",
    "security": [{"operatorToken": []}],
    "responses": {
        **responses(
            ok(200, "OpsStats", "Every live node, and totals."), "unauthorized", "invalid_token"
        ),
        "503": {
            "description": "Redis (where nodes report) is unreachable: "
            "`error.code` is `stats_unavailable`; retry.",
            "content": json_content(ref("Error")),
        },
    },
}

PATHS: Json = {
    "/v1/users": {
        "post": op(
            "accounts",
            "Sign up",
            ok(201, "SignedUp", "Account created; the token is ready to use."),
            (*SIGN_UP_ERRORS, *TEXT_ERRORS, "handle_taken"),
            public=True,
            body="SignUp",
        )
    },
    "/v1/sessions": {
        "post": op(
            "accounts",
            "Sign in",
            ok(200, "SignedIn", "Signed in."),
            (*BODY, "invalid_field", "invalid_credentials"),
            public=True,
            body="SignIn",
            description="An unknown handle and a wrong password get the same answer.",
        )
    },
    "/v1/users/{handle}": {
        "get": op(
            "users",
            "A profile with its counts",
            ok(200, "Profile", "The profile."),
            ("user_not_found",),
            params=(HANDLE_PARAM,),
        )
    },
    "/v1/users/{handle}/posts": {
        "get": op(
            "users",
            "A user's posts, newest first",
            ok(200, "PostPage", "A page of posts."),
            ("user_not_found", *PAGE),
            params=(HANDLE_PARAM, *PAGED),
        )
    },
    "/v1/users/{handle}/followers": {
        "get": op(
            "users",
            "Who follows a user, newest accounts first",
            ok(200, "UserPage", "A page of accounts."),
            ("user_not_found", *PAGE),
            params=(HANDLE_PARAM, *PAGED),
        )
    },
    "/v1/users/{handle}/following": {
        "get": op(
            "users",
            "Whom a user follows, newest accounts first",
            ok(200, "UserPage", "A page of accounts."),
            ("user_not_found", *PAGE),
            params=(HANDLE_PARAM, *PAGED),
        )
    },
    "/v1/users/{user_id}/follow": {
        "post": op(
            "users",
            "Follow (idempotent)",
            ok(200, "FollowState", "Following."),
            FOLLOW_ERRORS,
            params=(USER_PARAM,),
        ),
        "delete": op(
            "users",
            "Unfollow (idempotent)",
            ok(200, "FollowState", "Not following."),
            FOLLOW_ERRORS,
            params=(USER_PARAM,),
        ),
    },
    "/v1/posts": {
        "post": op(
            "posts",
            "Publish a post",
            ok(201, "PostCreated", "Accepted; fan-out to followers is queued."),
            (*NEW_POST_ERRORS, *TEXT_ERRORS, "rate_limited"),
            params=(IDEMPOTENCY_HEADER,),
            body="NewPost",
        )
    },
    "/v1/posts/{id}": {
        "get": op(
            "posts", "Read a post", ok(200, "Post", "The post."), BY_ID, params=(POST_PARAM,)
        ),
        "delete": op(
            "posts",
            "Delete a post (author only)",
            {"204": {"description": "Deleted."}},
            (*BY_ID, "not_author"),
            params=(POST_PARAM,),
        ),
    },
    "/v1/posts/{id}/like": {
        "post": op(
            "posts",
            "Like (idempotent)",
            ok(200, "LikeState", "Liked; `likes` is the current count."),
            BY_ID,
            params=(POST_PARAM,),
        ),
        "delete": op(
            "posts",
            "Unlike (idempotent)",
            ok(200, "LikeState", "Not liked; `likes` is the current count."),
            BY_ID,
            params=(POST_PARAM,),
        ),
    },
    "/v1/posts/{id}/replies": {
        "get": op(
            "posts",
            "Replies to a post, oldest first",
            ok(200, "PostPage", "A page of replies."),
            (*BY_ID, *PAGE),
            params=(POST_PARAM, *PAGED),
        )
    },
    "/v1/feed": {
        "get": op(
            "feed",
            "Home timeline, newest first or ranked",
            ok(200, "FeedPage", "A page of the home timeline (own posts included)."),
            (*PAGE, "invalid_algorithm"),
            params=(*PAGED, ALGORITHM),
            description="`algorithm=ranked` re-ranks the newest few hundred posts of the "
            "home timeline with a learned model: the first page snapshots the ranked list "
            "for later pages (their cursor pages through it: no duplicate, no gap; "
            "deleted posts and unfollowed authors are left out), each post carries a "
            "`reason`, and a new first page ranks again. Ranking never fails a request: "
            "without it the chronological page is served, marked `algorithm: "
            "chronological`.",
        )
    },
    "/v1/feed/delta": {
        "get": op(
            "feed",
            "Home timeline posts newer than a post",
            ok(200, "PostDelta", "The newest posts after `since`, newest first."),
            ("missing_field", "invalid_field"),
            params=(SINCE, DELTA_LIMIT),
        )
    },
    "/v1/search": {
        "get": op(
            "feed",
            "Keyword search over posts, newest first",
            ok(200, "PostPage", "A page of matching posts."),
            ("missing_field", *PAGE),
            params=(SEARCH_Q, *PAGED),
        )
    },
    "/v1/notifications": {
        "get": op(
            "feed",
            "Likes, replies, reposts, mentions and new followers, newest first",
            ok(200, "NotificationPage", "A page of notifications."),
            PAGE,
            params=PAGED,
        )
    },
    "/v1/devices": {
        "post": op(
            "push",
            "Register a push device",
            ok(201, "DeviceRegistered", "Registered (or refreshed and moved to you)."),
            (*BODY, "invalid_field", "endpoint_refused", "too_many_devices"),
            body="NewDevice",
        ),
        "get": op("push", "My push devices", ok(200, "DeviceList", "Newest first.")),
    },
    "/v1/devices/{id}": {
        "delete": op(
            "push",
            "Delete one of my push devices",
            {"204": {"description": "Deleted; nothing more is pushed to it."}},
            ("not_found", "device_not_found"),
            params=(param("DeviceId"),),
        )
    },
    "/v1/media": {
        "post": op(
            "media",
            "Start an image upload (a pre-signed PUT straight to the object store)",
            ok(201, "MediaUpload", "PUT the bytes to `upload.url` with `upload.headers`."),
            (
                *BODY,
                "invalid_field",
                "unsupported_content_type",
                "media_too_large",
                "media_quota_exceeded",
                "rate_limited",
            ),
            body="NewMedia",
            description="The URL's signature covers `Content-Type` and `Content-Length`: "
            "the store refuses any other type or size, and any PUT after `expires_at`. Once "
            "the bytes are there, processing (off the request path) checks they are the "
            "image they claim to be, refuses decompression bombs and images over "
            "`MEDIA_MAX_PIXELS`, strips every metadata (EXIF, GPS), and stores the image "
            "and a 640 px wide preview: poll `GET /v1/media/{id}` until `status` is "
            "`ready` (or `failed`, with a `reason`).",
        )
    },
    "/v1/media/{id}": {
        "get": op(
            "media",
            "An upload's status, sizes and URLs",
            ok(200, "Media", "The media."),
            ("not_found", MEDIA_MISSING),
            params=(param("MediaId"),),
            description="The owner sees their media in every state; anyone signed in sees "
            "media attached to a post that is not deleted.",
        ),
        "patch": op(
            "media",
            "Set the alt text of my media",
            ok(200, "Media", "The media, with its alt text."),
            (*BODY, "invalid_field", "invalid_characters", "too_long", "not_found", MEDIA_MISSING),
            params=(param("MediaId"),),
            body="MediaPatch",
        ),
    },
    "/v1/push/vapid-public-key": {
        "get": op(
            "push",
            "The VAPID public key for Web Push subscriptions",
            ok(200, "VapidKey", "The key; stable for the deployment."),
            public=True,
        )
    },
    "/v1/openapi.json": {
        "get": op(
            "ops",
            "This document",
            {"200": {"description": "OpenAPI 3.1.", "content": json_content({"type": "object"})}},
            public=True,
        )
    },
    "/healthz": {"get": op("ops", "Alive", ok(200, "Health", "The process is up."), public=True)},
    "/readyz": {
        "get": op(
            "ops",
            "Dependencies reachable",
            {
                **ok(200, "Readiness", "Every required dependency answers."),
                **ok(503, "Readiness", "A required dependency (Postgres) is down."),
            },
            public=True,
        )
    },
    "/metrics": {
        "get": op(
            "ops",
            "Prometheus metrics",
            text("text/plain", "Prometheus text exposition format."),
            public=True,
        )
    },
    "/v1/ops/stats": {"get": OPS_STATS},
    "/ops": {
        "get": op(
            "ops",
            "The ops dashboard",
            text("text/html", "The dashboard's page; it asks for the operator token."),
            public=True,
        )
    },
    "/": {
        "get": op(
            "ops",
            "The web client",
            text("text/html", "The web client's page; its files are under `/static/`."),
            public=True,
        )
    },
    "/sw.js": {
        "get": op(
            "ops",
            "The web client's service worker",
            text("text/javascript", "Served at the root so its scope is the whole site."),
            public=True,
        )
    },
    "/client-config.json": {
        "get": op(
            "ops",
            "Where the web client connects for live updates",
            {
                "200": {
                    "description": "`PUBLIC_STREAM_URL`, or the page's host on `GATEWAY_PORT`.",
                    "content": json_content(
                        obj({"stream_url": {"type": "string", "format": "uri"}}),
                        {"stream_url": "http://127.0.0.1:8081"},
                    ),
                }
            },
            ("invalid_host",),
            public=True,
        )
    },
}

DESCRIPTION = f"""\
The HTTP API of the feed server. Bodies are JSON. Ids are decimal **strings** (64-bit
integers do not survive JavaScript); timestamps are ISO-8601 UTC.

Authentication: `Authorization: Bearer <token>` with the token from sign-up or sign-in,
on every `/v1/` operation except sign-up, sign-in and this document. `/v1/ops/` takes
the operator token (`OPERATOR_TOKEN`) instead, never a user's.

Errors always have the shape `{{"error": {{"code", "message", "field"?}}}}`; `code` is
machine-readable and each operation lists the codes it can answer. Unknown body fields
are refused (422 `unknown_field`); bodies over 16 KiB get 413 `body_too_large`, and one
that has not arrived within {BODY_SECONDS:g} s gets 408 `body_timeout`; a path that
exists with another method gets 405 `method_not_allowed` with `Allow`; a request that is
not valid HTTP/1.1 (a line over 8 190 bytes, an unknown method, a body encoding the
server cannot decode) gets 400 `malformed_request`, and its connection closes. Lists are
cursor-paginated: pass `next_cursor` back as `cursor` while `has_more` is true.
Live updates come from the gateway (`/v1/stream`, WebSocket or SSE), not from here.
Posting is limited to {RATE_LIMIT_POSTS} posts per 3 hours (429 with `Retry-After`).
"""

DOCUMENT: Json = {
    "openapi": "3.1.0",
    "info": {"title": "feed", "version": "1", "description": DESCRIPTION},
    "tags": [
        {"name": "accounts", "description": "Sign-up and sign-in."},
        {"name": "users", "description": "Profiles and the social graph."},
        {"name": "posts", "description": "Writing, reading, deleting and liking posts."},
        {"name": "feed", "description": "Home timeline, search and notifications."},
        {"name": "media", "description": "Images for posts, uploaded to the object store."},
        {
            "name": "push",
            "description": "Push devices (APNs, FCM, Web Push) for offline users.",
        },
        {"name": "ops", "description": "Health, readiness, metrics and documents."},
    ],
    "security": [{"bearerAuth": []}],
    "paths": PATHS,
    "components": {
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "A token from `POST /v1/users` or `POST /v1/sessions`.",
            },
            "operatorToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "The operator token (`OPERATOR_TOKEN`), for `/v1/ops/`.",
            },
        },
        "schemas": SCHEMAS,
        "parameters": PARAMETERS,
        "responses": {
            "MethodNotAllowed": error_response(
                405,
                ("method_not_allowed",),
                {
                    "Allow": {
                        "required": True,
                        "description": "The methods this path accepts.",
                        "schema": {"type": "string"},
                    }
                },
            )
        },
    },
}

DOCUMENT_BYTES = orjson.dumps(DOCUMENT)


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=DOCUMENT_BYTES, content_type="application/json")
