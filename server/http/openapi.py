"""GET /v1/openapi.json: the OpenAPI 3.1 description of this server's HTTP API.

Rendered once at import (no I/O) and served as the same bytes on every request. Schemas
come from the models of server/contract (the same ones requests are validated with, so
a limit is stated once); operations from the table in server/contract/paths.py; the error
codes and what they mean are listed here. tests/server/test_openapi.py checks routes and real
responses against it.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema

from server.contract.errors import Error
from server.contract.fields import ID_SCHEMA, IdempotencyKey
from server.contract.media import CONTENT_TYPES
from server.contract.paths import OPERATIONS, Answer, Code, Operation
from server.contract.queries import Query
from server.domain.devices import MAX_DEVICES
from server.domain.posts import RATE_LIMIT_POSTS
from server.http.validation import BODY_SECONDS

Json = dict[str, Any]
COMPONENTS = "#/components/schemas/{model}"
VALIDATION: Literal["validation"] = "validation"  # request bodies, as clients send them

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
    408: {"body_timeout": f"the body did not arrive within {BODY_SECONDS:g} s (connection closed)"},
    409: {
        "handle_taken": "the handle is taken (handles are unique case-insensitively)",
        "too_many_devices": f"at most {MAX_DEVICES} push devices per user; delete one first",
        "media_quota_exceeded": "your media would pass your storage quota (`MEDIA_QUOTA_BYTES`)",
        "media_attached": "the media is part of a post already; alt text is set before posting",
    },
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
        "invalid_password": "a password is 8-128 characters, no NUL",
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


class Schemas(GenerateJsonSchema):
    """pydantic's JSON Schema (draft 2020-12, OpenAPI 3.1's dialect) without the titles it
    derives from Python names: they say nothing a reader needs."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def generate(self, schema: Any, mode: Any = "validation") -> Any:
        return _untitled(super().generate(schema, mode))


def _untitled(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _untitled(v) for k, v in node.items() if k != "title" or isinstance(v, dict)}
    if isinstance(node, list):
        return [_untitled(v) for v in node]
    return node


def _model_schemas() -> tuple[dict[Any, Json], Json]:
    """Every model's schema as a $ref into components, and the components themselves."""
    models = {Error}
    for operation in OPERATIONS:
        models.update(a.model for a in operation.answers if a.model is not None)
        if operation.body is not None:
            models.add(operation.body)
    adapters = [(m, VALIDATION, TypeAdapter(m)) for m in sorted(models, key=lambda m: m.__name__)]
    refs, top = TypeAdapter.json_schemas(
        adapters, ref_template=COMPONENTS, schema_generator=Schemas
    )
    return {model: schema for (model, _), schema in refs.items()}, _untitled(top["$defs"])


REFS, SCHEMAS = _model_schemas()


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
            REFS[Error],
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


def status_of(code: Code) -> tuple[int, str]:
    if isinstance(code, tuple):
        return code
    statuses = [status for status, meanings in ERROR_CODES.items() if code in meanings]
    if len(statuses) != 1:
        raise ValueError(f"error code {code!r} needs its status: {statuses}")
    return statuses[0], code


def answer(found: Answer) -> Json:
    response: Json = {"description": found.description}
    if found.model is not None:
        response["content"] = json_content(REFS[found.model], found.example)
    elif found.media_type == "application/json":
        response["content"] = json_content({"type": "object"})
    elif found.media_type is not None:
        response["content"] = {found.media_type: {"schema": {"type": "string"}}}
    return response


def responses(answers: tuple[Answer, ...], codes: tuple[Code, ...]) -> Json:
    """The answers plus one error response per status of the codes named."""
    by_status: dict[int, tuple[str, ...]] = {}
    for status, code in sorted(map(status_of, codes), key=lambda sc: sc[0]):
        by_status[status] = (*by_status.get(status, ()), code)
    out = {str(a.status): answer(a) for a in answers}
    for status, found in by_status.items():
        headers = RETRY_AFTER if status == 429 else None
        if status == 401 and set(found) & set(AUTH):  # not sent for invalid_credentials
            headers = WWW_AUTHENTICATE
        out[str(status)] = error_response(status, found, headers)
    return out


def query_parameters(query: type[Query]) -> list[Json]:
    """One parameter per field of a query model, its schema generated like any other."""
    schema = TypeAdapter(query).json_schema(schema_generator=Schemas)
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema["properties"].items():
        description = prop.pop("description", "")
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": _query_schema(prop),
                "description": description,
            }
        )
    return parameters


def _query_schema(prop: Json) -> Json:
    """A query value is never null: `X | None` means absent, so only X is documented."""
    if "anyOf" in prop:
        kept = [s for s in prop["anyOf"] if s != {"type": "null"}]
        rest = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
        return {**kept[0], **rest} if len(kept) == 1 else prop
    return prop


def path(name: str, schema: Json, description: str) -> Json:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


PARAMETERS: Json = {
    "PostId": path("id", ID_SCHEMA, "A post id; not an id at all: 404 `not_found`."),
    "UserId": path("user_id", ID_SCHEMA, "A user id; not an id at all: 404 `not_found`."),
    "Handle": path("handle", {"type": "string"}, "A handle, any case."),
    "DeviceId": path("id", ID_SCHEMA, "A device id; not an id at all: 404 `not_found`."),
    "MediaId": path("id", ID_SCHEMA, "A media id; not an id at all: 404 `not_found`."),
    "IdempotencyKey": {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": TypeAdapter(IdempotencyKey).json_schema(),
        "description": "1-128 printable ASCII characters. A retry with the same key within "
        "24 hours returns the first result (201) and posts nothing.",
    },
}


def operation(op: Operation) -> Json:
    rendered: Json = {"tags": [op.tag], "summary": op.summary}
    if op.description:
        rendered["description"] = op.description
    parameters = [{"$ref": f"#/components/parameters/{name}"} for name in op.params]
    if op.query is not None:
        parameters += query_parameters(op.query)
    if parameters:
        rendered["parameters"] = parameters
    if op.body is not None:
        rendered["requestBody"] = {"required": True, "content": json_content(REFS[op.body])}
    rendered["responses"] = responses(op.answers, op.errors if op.public else (*AUTH, *op.errors))
    if op.operator:
        rendered["security"] = [{"operatorToken": []}]
    elif op.public:
        rendered["security"] = []
    return rendered


def paths() -> Json:
    out: Json = {}
    for op in OPERATIONS:
        out.setdefault(op.path, {})[op.method] = operation(op)
    return out


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

TAGS = {
    "accounts": "Sign-up and sign-in.",
    "users": "Profiles and the social graph.",
    "posts": "Writing, reading, deleting and liking posts.",
    "feed": "Home timeline, search and notifications.",
    "media": "Images for posts, uploaded to the object store.",
    "push": "Push devices (APNs, FCM, Web Push) for offline users.",
    "ops": "Health, readiness, metrics and documents.",
}


def bearer(description: str) -> Json:
    return {"type": "http", "scheme": "bearer", "description": description}


DOCUMENT: Json = {
    "openapi": "3.1.0",
    "info": {"title": "feed", "version": "1", "description": DESCRIPTION},
    "tags": [{"name": name, "description": text} for name, text in TAGS.items()],
    "security": [{"bearerAuth": []}],
    "paths": paths(),
    "components": {
        "securitySchemes": {
            "bearerAuth": bearer("A token from `POST /v1/users` or `POST /v1/sessions`."),
            "operatorToken": bearer("The operator token (`OPERATOR_TOKEN`), for `/v1/ops/`."),
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
