"""Every limit the API document states, walked at its boundary against the real server:
just inside and at the bound are accepted, one past it is refused with the exact code.

The limits are read from the served document (generated from server/contract's models,
the same ones requests are validated with): a new maxLength, minLength, maxItems,
minimum or maximum on a request body or query parameter is walked here without a new
line of test. What cannot come from the document is how to make an otherwise valid
request (a signed-in user, a post to reply to, ready media to attach): TARGETS, one per
operation, and a test fails when an operation with a body or query has none.

Lengths count code points: where a field's pattern allows it, a length is walked again
with a character outside the BMP (one code point, two UTF-16 units, four UTF-8 bytes).
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from core.ids import IdGenerator, IdLease
from core.settings import Settings
from tests.support.api import User, new_handle, post, sign_up

Client = TestClient[web.Request, web.Application]
Json = dict[str, Any]

WIDE = "\U0001f600"  # 😀: one code point outside the BMP
ASCII = string.ascii_letters + string.digits + "_"
PUBLIC_ENDPOINT = "https://93.184.216.34/push/"


@pytest.fixture
async def ids(db: asyncpg.Pool) -> AsyncIterator[IdGenerator]:
    """Ids for media rows written directly, leased like any process's (no collisions)."""
    lease = IdLease(db, holder="tests:limits")
    yield await lease.acquire()
    await lease.release()


async def document(api: Client) -> Json:
    resp = await api.get("/v1/openapi.json")
    assert resp.status == 200
    spec: Json = json.loads(await resp.read())
    return spec


# --- the limits, as the document states them ---------------------------------------


@dataclass(frozen=True)
class Limit:
    where: tuple[str, ...]  # where the value goes in the body (or the query parameter)
    kind: str  # "length", "items" or "number"
    bound: str  # "min" or "max"
    value: int
    pattern: str | None = None

    @property
    def name(self) -> str:
        return self.where[-1]

    def steps(self) -> list[tuple[int, bool]]:
        """(value, accepted): one inside, at, and one past the bound."""
        inside = -1 if self.bound == "max" else 1
        steps = [(self.value + inside, True), (self.value, True), (self.value - inside, False)]
        return [(n, ok) for n, ok in steps if n >= 0]


def resolve(spec: Json, schema: Json) -> Json:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def limits_of(spec: Json, schema: Json, where: tuple[str, ...] = ()) -> list[Limit]:
    """Every bound in a schema, nested objects included; `X | null` is X's bounds."""
    schema = resolve(spec, schema)
    found: list[Limit] = []
    for branch in schema.get("anyOf", []):
        if branch.get("type") != "null":
            found += limits_of(spec, branch, where)
    for name, prop in schema.get("properties", {}).items():
        found += limits_of(spec, prop, (*where, name))
    kinds = {"string": "length", "array": "items", "integer": "number"}
    kind = kinds.get(schema.get("type", ""))
    keys = {
        "length": ("minLength", "maxLength"),
        "items": ("minItems", "maxItems"),
        "number": ("minimum", "maximum"),
    }
    if kind is not None:
        low, high = keys[kind]
        for key, bound in ((low, "min"), (high, "max")):
            if key in schema:
                found.append(Limit(where, kind, bound, schema[key], schema.get("pattern")))
    return found


# --- how to make a request that only the walked value can spoil ------------------------


@dataclass
class Context:
    api: Client
    db: asyncpg.Pool
    ids: IdGenerator
    user: User
    path: Json = field(default_factory=dict)


Body = Callable[[Context], Json]


@dataclass(frozen=True)
class Target:
    method: str
    path: str
    body: Body | None = None  # a valid body, new each call
    variants: dict[str, Body] = field(default_factory=dict)  # a oneOf body, by schema
    setup: Callable[[Context], Awaitable[None]] | None = None
    public: bool = False
    # Fields whose bounds cannot be reached by a valid value, and why.
    unwalkable: dict[str, str] = field(default_factory=dict)


def subscription_keys() -> Json:
    point = b"\x04" + bytes(range(1, 65))  # the server checks the encoding, not the curve
    return {
        "p256dh": base64.urlsafe_b64encode(point).rstrip(b"=").decode(),
        "auth": base64.urlsafe_b64encode(bytes(16)).rstrip(b"=").decode(),
    }


async def a_post(ctx: Context) -> None:
    ctx.path["id"] = await post(ctx.api, ctx.user, "to reply to")


async def a_profile(ctx: Context) -> None:
    ctx.path["handle"] = ctx.user.handle


async def a_media(ctx: Context) -> None:
    resp = await ctx.api.post(
        "/v1/media", json={"content_type": "image/png", "size": 100}, headers=ctx.user.auth
    )
    assert resp.status == 201, await resp.text()
    ctx.path["id"] = (await resp.json())["media_id"]


TARGETS = [
    Target(
        "POST",
        "/v1/users",
        lambda ctx: {"handle": new_handle(), "password": "correct horse"},
        public=True,
    ),
    Target(
        "POST",
        "/v1/sessions",
        lambda ctx: {"handle": ctx.user.handle, "password": "correct horse"},
        public=True,
    ),
    Target("POST", "/v1/posts", lambda ctx: {"text": "walking the limits"}),
    Target(
        "POST",
        "/v1/devices",
        variants={
            "ApnsDevice": lambda ctx: {"kind": "apns", "token": "ab" * 32},
            "FcmDevice": lambda ctx: {"kind": "fcm", "token": "f" * 64},
            "WebPushDevice": lambda ctx: {
                "kind": "webpush",
                "subscription": {"endpoint": PUBLIC_ENDPOINT + "x", "keys": subscription_keys()},
            },
        },
        unwalkable={
            "p256dh": "must decode to exactly 65 bytes (87 characters): 200 cannot be valid",
            "auth": "must decode to exactly 16 bytes (22 characters): 200 cannot be valid",
        },
    ),
    Target("POST", "/v1/media", lambda ctx: {"content_type": "image/png", "size": 100}),
    Target("PATCH", "/v1/media/{id}", lambda ctx: {"alt_text": "a"}, setup=a_media),
    Target("GET", "/v1/users/{handle}/posts", setup=a_profile),
    Target("GET", "/v1/users/{handle}/followers", setup=a_profile),
    Target("GET", "/v1/users/{handle}/following", setup=a_profile),
    Target("GET", "/v1/posts/{id}/replies", setup=a_post),
    Target("GET", "/v1/feed"),
    Target("GET", "/v1/feed/delta", lambda ctx: {"since": "1"}),
    Target("GET", "/v1/search", lambda ctx: {"q": "walking"}),
    Target("GET", "/v1/notifications"),
]
# The kind of cursor each list issues (an opaque cursor of another list is refused).
CURSOR_KINDS = {
    "/v1/users/{handle}/posts": "profile",
    "/v1/users/{handle}/followers": "followers",
    "/v1/users/{handle}/following": "following",
    "/v1/posts/{id}/replies": "replies",
    "/v1/feed": "feed",
    "/v1/search": "search",
    "/v1/notifications": "notifications",
}
# The field an error names, where it is not the parameter's own name.
REPORTED_AS = {"Idempotency-Key": "idempotency_key"}  # one rule, body field or header
# The code a value past its bound gets, where it is not `invalid_field`.
REFUSED_AS = {
    ("handle", "min"): "invalid_handle",
    ("handle", "max"): "invalid_handle",
    ("password", "min"): "invalid_password",
    ("password", "max"): "invalid_password",
    ("text", "min"): "empty_text",
    ("text", "max"): "too_long",
    ("display_name", "max"): "too_long",
    ("alt_text", "max"): "too_long",
    ("endpoint", "max"): "endpoint_refused",
    ("cursor", "max"): "invalid_cursor",
    ("q", "min"): "missing_field",  # blank after trimming is no search at all
}


def fillers(limit: Limit) -> list[str]:
    """Characters a value of this length is made of: random ASCII the pattern allows
    (handles and keys must be new each time), and the wide character if it is allowed."""
    if limit.name in ("cursor", "endpoint"):  # made by their own rule (value_for)
        return ["ascii"]
    if limit.pattern is None:
        return ["ascii", WIDE]
    allowed = [c for c in ASCII if re.fullmatch(limit.pattern, c)]
    assert allowed, limit
    return ["ascii"] + ([WIDE] if re.fullmatch(limit.pattern, WIDE) else [])


def text_of(limit: Limit, length: int, filler: str, prefix: str = "") -> str:
    if filler != "ascii":
        return prefix + filler * (length - len(prefix))
    allowed = [c for c in ASCII if limit.pattern is None or re.fullmatch(limit.pattern, c)]
    return prefix + "".join(random.choices(allowed, k=length - len(prefix)))


async def ready_media(ctx: Context, count: int) -> list[str]:
    """Media of the signed-in user, processed and on no post (as the worker leaves them)."""
    made = [ctx.ids.next_id() for _ in range(count)]
    await ctx.db.executemany(
        "INSERT INTO media (id, owner_id, content_type, size, status, upload_key, "
        "upload_expires_at, image_key, preview_key, width, height) "
        "VALUES ($1, $2, 'image/png', 100, 'ready', 'k', now(), $3, $3, 1, 1)",
        [(m, int(ctx.user.id), f"media/{m}.png") for m in made],
    )
    return [str(m) for m in made]


async def value_for(ctx: Context, limit: Limit, n: int, filler: str) -> Any:
    if limit.kind == "number":
        return n
    if limit.kind == "items":
        assert limit.name == "media_ids", f"no way to make items of {limit.name}"
        return await ready_media(ctx, n)
    if limit.name == "endpoint":
        return text_of(limit, n, "ascii", PUBLIC_ENDPOINT)
    if limit.name == "cursor":
        return cursor_of(CURSOR_KINDS[ctx.path["template"]], n)
    return text_of(limit, n, filler)


def cursor_of(kind: str, length: int) -> str:
    """A valid cursor of exactly `length` characters: leading zeros pad its id."""
    assert length % 4 != 1, "no base64 text has this length"
    size = length * 3 // 4  # bytes that encode to `length` characters without padding
    head = f"v1:{kind}:"
    text = head + "1".rjust(size - len(head), "0")
    encoded = base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()
    assert len(encoded) == length
    return encoded


def placed(body: Json, where: tuple[str, ...], value: Any) -> Json:
    if len(where) == 1:
        return {**body, where[0]: value}
    return {**body, where[0]: placed(body.get(where[0], {}), where[1:], value)}


async def send(ctx: Context, target: Target, body: Json, extra: dict[str, str]) -> tuple[int, Json]:
    headers = {**extra} if target.public else {**extra, **ctx.user.auth}
    url = target.path.format(**ctx.path)
    if target.method == "GET":
        resp = await ctx.api.get(url, params=body, headers=headers)
    else:
        # Raw UTF-8: aiohttp's json= escapes non-ASCII (12 bytes per wide character).
        headers["Content-Type"] = "application/json"
        resp = await ctx.api.request(target.method, url, data=orjson.dumps(body), headers=headers)
    answer: Json = await resp.json() if resp.content_type == "application/json" else {}
    return resp.status, answer


def walked(spec: Json, target: Target) -> list[tuple[str, Body, Limit]]:
    """(where, base body, limit) for every limit of the target's body, query parameters
    and header parameters."""
    operation = spec["paths"][target.path][target.method.lower()]
    found = []
    for parameter in operation.get("parameters", []):
        if "$ref" in parameter:
            parameter = spec["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
        if parameter["in"] in ("query", "header"):
            base = target.body or (lambda ctx: {})
            for limit in limits_of(spec, parameter["schema"], (parameter["name"],)):
                found.append((parameter["in"], base, limit))
    if target.method == "GET":
        return found
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    body = resolve(spec, schema)
    if "oneOf" in body:
        names = [branch["$ref"].rsplit("/", 1)[1] for branch in body["oneOf"]]
        assert set(names) == set(target.variants), "a body shape without a valid example"
        return found + [
            (name, target.variants[name], limit)
            for name, branch in zip(names, body["oneOf"], strict=True)
            for limit in limits_of(spec, branch)
        ]
    assert target.body is not None
    return found + [("body", target.body, limit) for limit in limits_of(spec, schema)]


def expected(limit: Limit, accepted: bool, target: Target) -> tuple[int, str | None]:
    """The status (and code) this step must get."""
    reference = limit.kind == "number" and limit.name in ("reply_to", "repost_of")
    if accepted:
        if reference:  # a well-formed id of no post: past validation, then looked up
            return 422, "post_not_found"
        ok = {"POST": 201, "GET": 200, "PATCH": 200}[target.method]
        if target.path == "/v1/sessions":
            ok = 200
        return ok, None
    return 422, REFUSED_AS.get((limit.name, limit.bound), "invalid_field")


# --- the tests ---------------------------------------------------------------------


async def test_every_operation_with_a_body_or_query_has_a_target(api: Client) -> None:
    spec = await document(api)
    needing = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if "requestBody" in operation
        or any(p.get("in") == "query" for p in operation.get("parameters", []))
    }
    assert needing == {(t.method, t.path) for t in TARGETS}


async def test_the_document_states_the_limits_clients_rely_on(api: Client) -> None:
    """The walk below is only as good as what it finds: the known limits must be there."""
    spec = await document(api)
    found = {
        (t.path, limit.name, limit.bound, limit.value)
        for t in TARGETS
        for _, _, limit in walked(spec, t)
    }
    for expected_limit in [
        ("/v1/users", "handle", "max", 15),
        ("/v1/users", "password", "min", 8),
        ("/v1/users", "password", "max", 128),
        ("/v1/users", "display_name", "max", 50),
        ("/v1/posts", "text", "max", 280),
        ("/v1/posts", "media_ids", "max", 4),
        ("/v1/posts", "idempotency_key", "max", 128),
        ("/v1/posts", "Idempotency-Key", "max", 128),
        ("/v1/posts", "reply_to", "max", 2**63 - 1),
        ("/v1/devices", "token", "min", 64),
        ("/v1/devices", "token", "max", 1024),
        ("/v1/devices", "endpoint", "max", 2048),
        ("/v1/media", "size", "min", 1),
        ("/v1/media/{id}", "alt_text", "max", 1500),
        ("/v1/feed", "limit", "max", 100),
        ("/v1/feed", "cursor", "max", 200),
        ("/v1/feed/delta", "limit", "max", 200),
        ("/v1/search", "q", "max", 200),
    ]:
        assert expected_limit in found


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"{t.method} {t.path}")
async def test_every_limit_at_its_boundary(
    api: Client, db: asyncpg.Pool, ids: IdGenerator, target: Target
) -> None:
    spec = await document(api)
    ctx = Context(api, db, ids, await sign_up(api))
    ctx.path["template"] = target.path
    if target.setup is not None:
        await target.setup(ctx)
    walked_here = 0
    for shape, base, limit in walked(spec, target):
        if limit.name in target.unwalkable:
            continue
        for filler in fillers(limit) if limit.kind == "length" else [""]:
            for n, accepted in limit.steps():
                if limit.name == "cursor" and n % 4 == 1:  # no base64 text is that long:
                    n += 1  # the next length that is (still past the bound) shows it
                value = await value_for(ctx, limit, n, filler)
                if shape == "header":
                    request = (base(ctx), {limit.name: value})
                else:
                    request = (placed(base(ctx), limit.where, value), {})
                status, answer = await send(ctx, target, *request)
                want = expected(limit, accepted, target)
                got = (status, answer.get("error", {}).get("code"))
                what = f"{shape} {limit.name} {limit.bound}={limit.value}: {n} ({filler!r})"
                assert got == want, f"{what}: {answer}"
                if not accepted:
                    field = REPORTED_AS.get(limit.name, limit.name)
                    assert answer["error"]["field"] == field, what
                walked_here += 1
    if target.path != "/v1/sessions":  # sign-in takes any strings: nothing to walk
        assert walked_here, f"{target.method} {target.path} has no limit to walk"


async def test_the_size_limit_of_an_upload_is_the_setting(settings: Settings, api: Client) -> None:
    """Not a schema bound (a deployment sets it) but a limit all the same: 413 past it."""
    me = await sign_up(api)
    for size, status in [(settings.media_max_bytes, 201), (settings.media_max_bytes + 1, 413)]:
        resp = await api.post(
            "/v1/media", json={"content_type": "image/png", "size": size}, headers=me.auth
        )
        assert resp.status == status, await resp.text()
