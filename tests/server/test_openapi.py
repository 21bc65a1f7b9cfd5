"""The OpenAPI document against the real server: valid OpenAPI 3.1, no drift from the routes
the app registers, and real responses (success and error) matching the schemas declared
for their path, method and status. Every documented success response and every error code
the document defines is seen at least once, so it cannot promise what the server never does.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from core.auth import TokenSigner
from core.ids import IdGenerator, IdLease
from core.settings import Settings
from server.domain.devices import MAX_DEVICES
from server.domain.posts import RATE_LIMIT_POSTS
from server.http import validation
from server.http.openapi import DOCUMENT_BYTES, ERROR_CODES
from tests.support.api import User, follow, new_handle, post, sign_up
from tests.support.media import png, processed, put

Client = TestClient[web.Request, web.Application]

SPEC_URI = "urn:feed:openapi"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


async def served_document(api: Client) -> dict[str, Any]:
    resp = await api.get("/v1/openapi.json")  # public: no Authorization
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    document: dict[str, Any] = json.loads(await resp.read())
    return document


def pointer(*parts: str) -> str:
    """A JSON pointer as a URI fragment (RFC 6901 escaping, then percent-encoding)."""
    escaped = (p.replace("~", "~0").replace("/", "~1") for p in parts)
    return quote("/" + "/".join(escaped), safe="/~")


class Conformance:
    """Sends requests and checks each answer against the document: the status must be
    documented for the operation, the body must match the schema declared for it, required
    headers must be present, and a request the server accepted must match the request body
    schema. Records what it saw so a test can check coverage."""

    def __init__(self, client: Client, spec: dict[str, Any]) -> None:
        self.client = client
        self.spec = spec
        self.registry: Registry[Any] = Registry().with_resource(
            SPEC_URI, Resource.from_contents(spec, default_specification=DRAFT202012)
        )
        self.statuses: set[tuple[str, str, str]] = set()
        self.codes: set[tuple[int, str]] = set()

    def validate(self, instance: Any, location: str, what: str) -> None:
        validator = Draft202012Validator(
            {"$ref": f"{SPEC_URI}#{location}"},
            registry=self.registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        errors = [
            f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in validator.iter_errors(instance)
        ]
        assert not errors, f"{what} does not match {location}: {errors}\n{instance!r}"

    def response_for(self, template: str, method: str, status: int) -> tuple[dict[str, Any], str]:
        """The documented response object and its JSON-pointer location."""
        operation = self.spec["paths"][template].get(method)
        if operation is None:  # a method the path does not have: the one shared 405
            assert status == 405, f"{method.upper()} {template} is undocumented, got {status}"
            return self.spec["components"]["responses"]["MethodNotAllowed"], pointer(
                "components", "responses", "MethodNotAllowed"
            )
        documented = operation["responses"]
        assert str(status) in documented, (
            f"{method.upper()} {template} answered {status}, documented: {sorted(documented)}"
        )
        return documented[str(status)], pointer("paths", template, method, "responses", str(status))

    def check_query(self, template: str, method: str, sent: dict[str, str]) -> None:
        """Query parameters of an accepted request: documented, valid, required ones sent."""
        declared: dict[str, tuple[dict[str, Any], str]] = {}
        for i, parameter in enumerate(self.spec["paths"][template][method].get("parameters", [])):
            location = pointer("paths", template, method, "parameters", str(i))
            if "$ref" in parameter:
                name = parameter["$ref"].rsplit("/", 1)[1]
                parameter = self.spec["components"]["parameters"][name]
                location = pointer("components", "parameters", name)
            if parameter["in"] == "query":
                declared[parameter["name"]] = (parameter, location)
        assert set(sent) <= set(declared), (
            f"{method} {template}: undocumented {set(sent) - set(declared)}"
        )
        for name, (parameter, location) in declared.items():
            if name not in sent:
                assert not parameter.get("required"), f"{method} {template}: {name} not sent"
                continue
            value: Any = sent[name]
            if parameter["schema"].get("type") == "integer":
                value = int(value)
            self.validate(value, location + "/schema", f"query parameter {name}={value!r}")

    async def call(
        self,
        method: str,
        template: str,
        user: User | None = None,
        *,
        path: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[int, Any]:
        method = method.lower()
        headers = {**kwargs.pop("headers", {}), **(user.auth if user else {})}
        url = template.format(**(path or {}))
        resp = await self.client.request(method, url, headers=headers, **kwargs)
        raw = await resp.read()
        what = f"{method.upper()} {url} -> {resp.status}"
        response, location = self.response_for(template, method, resp.status)
        for name, header in response.get("headers", {}).items():
            if header.get("required"):
                assert name in resp.headers, f"{what}: missing header {name}"
        content = response.get("content")
        body: Any = None
        if not content:
            assert raw == b"", f"{what}: documented without a body, got {raw[:200]!r}"
        else:
            assert resp.content_type in content, f"{what}: {resp.content_type} not documented"
            if resp.content_type == "application/json":
                body = json.loads(raw)
                media = pointer("content", "application/json", "schema")
                self.validate(body, location + media, what)
            else:
                body = raw.decode()
        if 200 <= resp.status < 300 and "json" in kwargs:
            request_schema = pointer(
                "paths", template, method, "requestBody", "content", "application/json", "schema"
            )
            self.validate(kwargs["json"], request_schema, f"accepted request body of {what}")
        if 200 <= resp.status < 300:
            self.check_query(template, method, dict(kwargs.get("params", {})))
        self.statuses.add((template, method, str(resp.status)))
        if resp.status >= 400 and body is not None:
            self.codes.add((resp.status, body["error"]["code"]))
        return resp.status, body

    async def expect(
        self, status: int, code: str, method: str, template: str, *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        got, body = await self.call(method, template, *args, **kwargs)
        assert (got, body["error"]["code"]) == (status, code), body
        error: dict[str, Any] = body["error"]
        return error


@pytest.fixture
async def ids(db: asyncpg.Pool) -> AsyncIterator[IdGenerator]:
    """Ids for rows written directly (as fan-out or earlier requests would have), from a
    worker id leased like any process's, so they never collide with the server's."""
    lease = IdLease(db, holder="tests:openapi")
    yield await lease.acquire()
    await lease.release()


@pytest.fixture
async def conformance(api: Client) -> Conformance:
    return Conformance(api, await served_document(api))


def operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), template)
        for template, item in spec["paths"].items()
        for method in item
        if method in METHODS
    }


async def test_document_is_valid_openapi_3_1(api: Client) -> None:
    spec = await served_document(api)
    assert spec["openapi"].startswith("3.1.")
    validate(spec, cls=OpenAPIV31SpecValidator)  # raises with the first problem found


async def test_document_is_served_once_serialised_and_public(api: Client) -> None:
    resp = await api.get("/v1/openapi.json")
    assert resp.status == 200
    assert await resp.read() == DOCUMENT_BYTES
    spec = json.loads(DOCUMENT_BYTES)
    public = {
        (method.upper(), template)
        for template, item in spec["paths"].items()
        for method, operation in item.items()
        if operation.get("security") == []
    }
    public_api = {
        ("POST", "/v1/users"),
        ("POST", "/v1/sessions"),
        ("GET", "/v1/openapi.json"),
        ("GET", "/v1/push/vapid-public-key"),  # a public key, by definition
    }
    assert {op for op in public if op[1].startswith("/v1/")} == public_api
    assert spec["security"] == [{"bearerAuth": []}]


async def test_every_route_is_documented_and_nothing_else(api: Client) -> None:
    app = api.app
    assert app is not None
    registered = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD"
        and route.resource is not None
        and not isinstance(route.resource, web.StaticResource)
    }
    documented = operations(await served_document(api))
    assert registered - documented == set(), "routes missing from the document"
    assert documented - registered == set(), "documented operations the app does not have"


async def test_examples_match_their_schemas(api: Client) -> None:
    # Without rfc3339-validator, jsonschema skips date-time checks silently.
    assert not Draft202012Validator.FORMAT_CHECKER.conforms("yesterday", "date-time")
    spec = await served_document(api)
    check = Conformance(api, spec)
    seen = 0
    for name, schema in spec["components"]["schemas"].items():
        for i, example in enumerate(schema.get("examples", [])):
            check.validate(example, pointer("components", "schemas", name), f"example {i}")
            seen += 1
    for template, item in spec["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                for media_type, media in response.get("content", {}).items():
                    if "example" in media:
                        location = pointer(
                            "paths", template, method, "responses", status, "content", media_type
                        )
                        check.validate(media["example"], location + "/schema", location)
                        seen += 1
    assert seen > 20


async def test_success_responses_match_the_document(
    conformance: Conformance, api: Client, db: asyncpg.Pool, ids: IdGenerator, settings: Settings
) -> None:
    c = conformance
    word = f"w{uuid.uuid4().hex[:12]}"
    status, signed_up = await c.call(
        "POST",
        "/v1/users",
        json={"handle": new_handle("ada"), "password": "correct horse", "display_name": " Ada "},
    )
    assert status == 201
    ada = User(signed_up["user_id"], signed_up["handle"], signed_up["token"])
    bob, cy = await sign_up(api), await sign_up(api)
    status, _ = await c.call(
        "POST", "/v1/sessions", json={"handle": ada.handle.upper(), "password": "correct horse"}
    )
    assert status == 200

    await c.call("POST", "/v1/users/{user_id}/follow", ada, path={"user_id": bob.id})
    await follow(api, cy, bob)
    await follow(api, bob, ada)

    # Media: uploaded through the pre-signed URL, processed, described, then attached.
    image = png()
    _, started = await c.call(
        "POST", "/v1/media", bob, json={"content_type": "image/png", "size": len(image)}
    )
    assert (await put(started, image))[0] == 200
    media_id = started["media_id"]
    assert (await processed(api, bob, media_id))["status"] == "ready"
    await c.call("GET", "/v1/media/{id}", bob, path={"id": media_id})
    await c.call("PATCH", "/v1/media/{id}", bob, path={"id": media_id}, json={"alt_text": "dark"})

    first = await post(api, bob, f"first {word} @{ada.handle}")
    _, created = await c.call(
        "POST",
        "/v1/posts",
        bob,
        json={"text": f"  second {word}  ", "media_ids": [int(media_id)]},
        headers={"Idempotency-Key": "openapi-retry-1"},
    )
    retry = await c.call(
        "POST",
        "/v1/posts",
        bob,
        json={"text": f"second {word}"},
        headers={"Idempotency-Key": "openapi-retry-1"},
    )
    assert retry == (201, created)
    await c.call("POST", "/v1/posts", ada, json={"text": "a reply", "reply_to": first})
    await c.call("POST", "/v1/posts", ada, json={"text": "another", "reply_to": int(first)})
    await c.call("POST", "/v1/posts", ada, json={"text": "boost", "repost_of": first})
    doomed = await post(api, ada, "short-lived")

    one_post = {"id": first}
    _, liked = await c.call("POST", "/v1/posts/{id}/like", ada, path=one_post)
    assert liked == {"post_id": first, "liked": True, "likes": 1}
    await c.call("DELETE", "/v1/posts/{id}/like", ada, path=one_post)
    await c.call("POST", "/v1/posts/{id}/like", cy, path=one_post)
    _, read = await c.call("GET", "/v1/posts/{id}", ada, path={"id": created["post_id"]})
    assert read["media_ids"] == [media_id]
    # A non-empty `media`, so its item schema (PostMedia) is checked against real data.
    assert [(m["id"], m["alt_text"]) for m in read["media"]] == [(media_id, "dark")]
    _, read = await c.call("GET", "/v1/posts/{id}", ada, path=one_post)
    assert read["counts"] == {"likes": 1, "reposts": 1, "replies": 2}
    assert await c.call("DELETE", "/v1/posts/{id}", ada, path={"id": doomed}) == (204, None)

    _, replies = await c.call(
        "GET", "/v1/posts/{id}/replies", ada, path=one_post, params={"limit": "1"}
    )
    assert replies["has_more"] and replies["next_cursor"]
    await c.call(
        "GET",
        "/v1/posts/{id}/replies",
        ada,
        path=one_post,
        params={"cursor": replies["next_cursor"]},
    )

    _, feed = await c.call("GET", "/v1/feed", ada, params={"limit": "2"})
    assert feed["has_more"] and feed["next_cursor"]
    await c.call("GET", "/v1/feed", ada, params={"cursor": feed["next_cursor"]})
    _, ranked = await c.call("GET", "/v1/feed", ada, params={"algorithm": "ranked"})
    assert ranked["algorithm"] in ("ranked", "chronological")
    _, delta = await c.call("GET", "/v1/feed/delta", ada, params={"since": first, "limit": "200"})
    assert delta["posts"] and all(int(p["id"]) > int(first) for p in delta["posts"])

    who = {"handle": bob.handle.upper()}
    _, profile = await c.call("GET", "/v1/users/{handle}", ada, path=who)
    assert profile["followed_by_me"] and profile["counts"]["followers"] == 2
    _, mine = await c.call("GET", "/v1/users/{handle}/posts", ada, path=who, params={"limit": "1"})
    await c.call(
        "GET", "/v1/users/{handle}/posts", ada, path=who, params={"cursor": mine["next_cursor"]}
    )
    _, fans = await c.call(
        "GET", "/v1/users/{handle}/followers", ada, path=who, params={"limit": "1"}
    )
    assert fans["has_more"]
    await c.call(
        "GET", "/v1/users/{handle}/followers", ada, path=who, params={"cursor": fans["next_cursor"]}
    )
    await c.call("GET", "/v1/users/{handle}/following", ada, path=who)
    _, found = await c.call("GET", "/v1/search", ada, params={"q": word, "limit": "1"})
    assert found["has_more"]
    await c.call("GET", "/v1/search", ada, params={"q": word, "cursor": found["next_cursor"]})

    await db.executemany(
        "INSERT INTO notifications (id, user_id, kind, actor_id, post_id) VALUES ($1,$2,$3,$4,$5)",
        [
            (
                ids.next_id(),
                int(bob.id),
                kind,
                int(ada.id),
                None if kind == "follow" else int(first),
            )
            for kind in ("follow", "like", "reply", "repost", "mention")
        ],
    )
    _, notes = await c.call("GET", "/v1/notifications", bob, params={"limit": "3"})
    assert [n["kind"] for n in notes["notifications"]] == ["mention", "repost", "reply"]
    _, rest = await c.call("GET", "/v1/notifications", bob, params={"cursor": notes["next_cursor"]})
    assert rest["notifications"][-1]["post_id"] is None and not rest["has_more"]

    token = "ab" * 32
    _, device = await c.call("POST", "/v1/devices", ada, json={"kind": "apns", "token": token})
    _, listed = await c.call("GET", "/v1/devices", ada)
    assert [d["id"] for d in listed["devices"]] == [device["device"]["id"]]
    await c.call("DELETE", "/v1/devices/{id}", ada, path={"id": device["device"]["id"]})
    _, key = await c.call("GET", "/v1/push/vapid-public-key", ada)
    assert len(key["public_key"]) == 87  # 65 bytes, base64url without padding

    _, unfollowed = await c.call(
        "DELETE", "/v1/users/{user_id}/follow", ada, path={"user_id": bob.id}
    )
    assert unfollowed == {"user_id": bob.id, "following": False, "followers": 1}

    await c.call("GET", "/healthz")
    _, ready = await c.call("GET", "/readyz")
    assert ready["ready"] is True
    _, metrics = await c.call("GET", "/metrics")
    assert "feed_service_info" in metrics
    await c.call("GET", "/")
    await c.call("GET", "/ops")
    operator = {"Authorization": f"Bearer {settings.operator_token}"}
    _, ops_stats = await c.call("GET", "/v1/ops/stats", headers=operator)
    assert ops_stats["totals"]["server"]["requests_total"] >= 0
    await c.call("GET", "/sw.js")
    _, config = await c.call("GET", "/client-config.json")
    assert config["stream_url"].startswith("http://")
    await c.call("GET", "/v1/openapi.json")

    documented_success = {
        (template, method, status)
        for template, item in c.spec["paths"].items()
        for method, operation in item.items()
        for status in operation["responses"]
        if status.startswith("2")
    }
    assert documented_success - c.statuses == set(), "documented but never exercised"


async def test_error_responses_match_the_document(
    conformance: Conformance,
    api: Client,
    db: asyncpg.Pool,
    ids: IdGenerator,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = conformance
    me, other = await sign_up(api), await sign_up(api)
    theirs = await post(api, other, "not yours")
    json_type = {"Content-Type": "application/json"}
    sign_up_body = {"handle": new_handle(), "password": "longenough"}

    # Accounts and request bodies.
    await c.expect(400, "invalid_json", "POST", "/v1/users", data=b"{nope", headers=json_type)
    await c.expect(400, "invalid_json", "POST", "/v1/sessions", data=b"", headers=json_type)
    await c.expect(
        413, "body_too_large", "POST", "/v1/sessions", data=b" " * 20_000, headers=json_type
    )
    await c.expect(422, "invalid_body", "POST", "/v1/users", json=[sign_up_body])
    error = await c.expect(
        422, "unknown_field", "POST", "/v1/users", json={**sign_up_body, "admin": True}
    )
    assert error["field"] == "admin"
    await c.expect(422, "missing_field", "POST", "/v1/sessions", json={"handle": me.handle})
    await c.expect(422, "invalid_field", "POST", "/v1/users", json={**sign_up_body, "handle": 7})
    await c.expect(
        422, "invalid_handle", "POST", "/v1/users", json={**sign_up_body, "handle": "abc\n"}
    )
    await c.expect(422, "invalid_field", "GET", "/v1/feed", me, params={"limit": "9" * 5000})
    await c.expect(
        422, "invalid_handle", "POST", "/v1/users", json={**sign_up_body, "handle": "a b"}
    )
    await c.expect(
        422, "invalid_password", "POST", "/v1/users", json={**sign_up_body, "password": "short"}
    )
    await c.expect(
        422, "too_long", "POST", "/v1/users", json={**sign_up_body, "display_name": "x" * 51}
    )
    await c.expect(
        409, "handle_taken", "POST", "/v1/users", json={**sign_up_body, "handle": me.handle}
    )
    await c.expect(
        401,
        "invalid_credentials",
        "POST",
        "/v1/sessions",
        json={"handle": me.handle, "password": "wrong-one"},
    )

    # Authentication.
    expired = TokenSigner(settings.secret_key, 60).issue(int(me.id), now=1_000_000)
    await c.expect(401, "unauthorized", "GET", "/v1/feed")
    await c.expect(401, "invalid_token", "GET", "/v1/feed", headers={"Authorization": "Basic x"})
    await c.expect(
        401,
        "token_expired",
        "GET",
        "/v1/notifications",
        headers={"Authorization": f"Bearer {expired}"},
    )

    # Posts.
    await c.expect(422, "missing_field", "POST", "/v1/posts", me, json={})
    await c.expect(422, "invalid_characters", "POST", "/v1/posts", me, json={"text": "a\x00b"})
    await c.expect(422, "too_long", "POST", "/v1/posts", me, json={"text": "x" * 281})
    await c.expect(422, "empty_text", "POST", "/v1/posts", me, json={"text": " \n "})
    await c.expect(
        422, "invalid_field", "POST", "/v1/posts", me, json={"text": "a", "reply_to": "x1"}
    )
    await c.expect(
        422, "invalid_field", "POST", "/v1/posts", me, json={"text": "a", "media_ids": ["1"] * 5}
    )
    await c.expect(
        422,
        "invalid_field",
        "POST",
        "/v1/posts",
        me,
        json={"text": "a"},
        headers={"Idempotency-Key": "has space"},
    )
    error = await c.expect(
        422, "post_not_found", "POST", "/v1/posts", me, json={"text": "a", "repost_of": "1"}
    )
    assert error["field"] == "repost_of"
    await c.expect(404, "not_found", "GET", "/v1/posts/{id}", me, path={"id": "abc"})
    await c.expect(404, "post_not_found", "GET", "/v1/posts/{id}", me, path={"id": "1"})
    await c.expect(404, "post_not_found", "POST", "/v1/posts/{id}/like", me, path={"id": "1"})
    await c.expect(403, "not_author", "DELETE", "/v1/posts/{id}", me, path={"id": theirs})
    await c.expect(404, "not_found", "GET", "/v1/posts/{id}/replies", me, path={"id": "9" * 20})
    await c.expect(405, "method_not_allowed", "PUT", "/v1/posts/{id}", me, path={"id": theirs})

    # Users and lists.
    await c.expect(
        404, "user_not_found", "GET", "/v1/users/{handle}", me, path={"handle": "no_one_zz"}
    )
    await c.expect(
        404, "user_not_found", "GET", "/v1/users/{handle}/followers", me, path={"handle": "x-y"}
    )
    await c.expect(
        422, "self_follow", "POST", "/v1/users/{user_id}/follow", me, path={"user_id": me.id}
    )
    await c.expect(
        404, "user_not_found", "DELETE", "/v1/users/{user_id}/follow", me, path={"user_id": "1"}
    )
    await c.expect(
        404, "not_found", "POST", "/v1/users/{user_id}/follow", me, path={"user_id": "0"}
    )
    await c.expect(422, "invalid_field", "GET", "/v1/feed", me, params={"limit": "101"})
    await c.expect(422, "invalid_cursor", "GET", "/v1/feed", me, params={"cursor": "bm9wZQ"})
    await c.expect(400, "invalid_algorithm", "GET", "/v1/feed", me, params={"algorithm": "x"})
    await c.expect(422, "invalid_field", "GET", "/v1/notifications", me, params={"limit": "0"})
    await c.expect(422, "missing_field", "GET", "/v1/feed/delta", me)
    await c.expect(
        422, "invalid_field", "GET", "/v1/feed/delta", me, params={"since": "1", "limit": "201"}
    )
    await c.expect(422, "missing_field", "GET", "/v1/search", me, params={"q": "  "})
    await c.expect(422, "invalid_field", "GET", "/v1/search", me, params={"q": "x" * 201})
    await c.expect(
        422,
        "invalid_cursor",
        "GET",
        "/v1/users/{handle}/following",
        me,
        path={"handle": me.handle},
        params={"cursor": "x" * 201},
    )

    # Push devices.
    await c.expect(
        422,
        "endpoint_refused",
        "POST",
        "/v1/devices",
        me,
        json={
            "kind": "webpush",
            "subscription": {
                "endpoint": "https://169.254.169.254/latest",
                "keys": {"p256dh": "BA" + "A" * 85, "auth": "A" * 22},
            },
        },
    )
    await c.expect(404, "device_not_found", "DELETE", "/v1/devices/{id}", me, path={"id": "1"})
    await db.executemany(
        "INSERT INTO devices (id, user_id, kind, token) VALUES ($1, $2, 'apns', $3)",
        [(ids.next_id(), int(me.id), f"{n:064x}") for n in range(MAX_DEVICES)],
    )
    await c.expect(
        409,
        "too_many_devices",
        "POST",
        "/v1/devices",
        me,
        json={"kind": "apns", "token": "cd" * 32},
    )

    # Media: refused uploads, unknown media, and media a post cannot take.
    png_of = {"content_type": "image/png", "size": 100}
    await c.expect(
        422,
        "unsupported_content_type",
        "POST",
        "/v1/media",
        me,
        json={**png_of, "content_type": "x"},
    )
    await c.expect(413, "media_too_large", "POST", "/v1/media", me, json={**png_of, "size": 10**9})
    await c.expect(404, "media_not_found", "GET", "/v1/media/{id}", me, path={"id": "1"})
    await c.expect(
        404,
        "media_not_found",
        "PATCH",
        "/v1/media/{id}",
        me,
        path={"id": "1"},
        json={"alt_text": "a"},
    )
    _, pending = await c.call("POST", "/v1/media", me, json=png_of)
    waiting = pending["media_id"]
    failed, attached = ids.next_id(), ids.next_id()
    await db.executemany(
        "INSERT INTO media (id, owner_id, content_type, size, status, reason, upload_key, "
        "upload_expires_at, image_key, width, height, post_id) "
        "VALUES ($1, $2, 'image/png', 100, $3, $4, 'k', now(), 'k', 1, 1, $5)",
        [
            (failed, int(me.id), "failed", "not_an_image: test", None),
            (attached, int(me.id), "ready", None, int(theirs)),
        ],
    )
    for code, media_ids in [
        ("media_not_ready", [waiting]),
        ("duplicate_media", [waiting, waiting]),
        ("media_not_found", ["1"]),
        ("media_failed", [str(failed)]),
        ("media_attached", [str(attached)]),
    ]:
        await c.expect(
            422, code, "POST", "/v1/posts", me, json={"text": "a", "media_ids": media_ids}
        )
    await c.expect(
        409,
        "media_attached",
        "PATCH",
        "/v1/media/{id}",
        me,
        path={"id": str(attached)},
        json={"alt_text": "too late"},
    )
    # Ready media count toward the quota (a row the worker will not touch meanwhile).
    await db.execute(
        "UPDATE media SET size = $1 WHERE id = $2", settings.media_quota_bytes, attached
    )
    await c.expect(409, "media_quota_exceeded", "POST", "/v1/media", me, json=png_of)

    # Rate limit: the posts of the last 3 hours, as earlier requests would have left them.
    await db.executemany(
        "INSERT INTO posts (id, author_id, text) VALUES ($1, $2, 'earlier')",
        [(ids.next_id(), int(me.id)) for _ in range(RATE_LIMIT_POSTS)],
    )
    await c.expect(429, "rate_limited", "POST", "/v1/posts", me, json={"text": "one more"})

    # A body that trickles in (the deadline shortened for the test).
    async def trickle() -> AsyncIterator[bytes]:
        yield b'{"text": '
        await asyncio.sleep(1.0)
        yield b'"late"}'

    monkeypatch.setattr(validation, "BODY_SECONDS", 0.2)
    await c.expect(408, "body_timeout", "POST", "/v1/posts", me, data=trickle())
    monkeypatch.undo()

    # Where the web client connects: the gateway's URL is built on the Host header.
    await c.expect(400, "invalid_host", "GET", "/client-config.json", headers={"Host": "a:b:c"})

    documented = {(status, code) for status, codes in ERROR_CODES.items() for code in codes}
    assert documented - c.codes == set(), "error codes documented but never answered"
    assert c.codes - documented == set()
