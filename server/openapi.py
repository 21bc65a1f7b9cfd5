"""GET /v1/openapi.json: placeholder replaced below."""

from __future__ import annotations

from aiohttp import web

from server.service_json import json


async def openapi(request: web.Request) -> web.Response:
    return json({"openapi": "3.1.0"})
