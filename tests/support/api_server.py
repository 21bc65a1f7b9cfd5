"""The API server as tests run it: the same runner as `python -m server`, so requests
reach server/http/fast_feed.py first (feed reads answered there, the rest handed to aiohttp)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from core.service import SETTINGS
from core.settings import Settings
from server.app import create_app
from server.http.fast_feed import FrontRunner


class ApiServer(TestServer):
    # TestServer._make_runner is aiohttp's, not public (core/aiohttp_internals.INTERNALS).
    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        # aiohttp's TestServer cancels a handler whose client left; `python -m server` (as
        # aiohttp's own default) lets it run on, and a body read then fails instead.
        kwargs["handler_cancellation"] = False
        kwargs["keepalive_timeout"] = self.app[SETTINGS].http_keepalive_seconds  # as served
        return FrontRunner(self.app, **kwargs)


def serve_api(settings: Settings) -> ApiServer:
    """For `aiohttp_client(serve_api(settings))`."""
    return ApiServer(create_app(settings))
