"""JSON responses (orjson), the only way handlers answer."""

from __future__ import annotations

import orjson
from aiohttp import web


def json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def json_bytes(body: bytes, status: int = 200) -> web.Response:
    """A body that is JSON already (the feed splices cached post JSON together)."""
    return web.Response(body=body, status=status, content_type="application/json")
