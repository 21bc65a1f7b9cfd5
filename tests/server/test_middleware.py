"""server/http/middleware.py: whatever a handler does, the client gets the one JSON error
shape, and /metrics counts the request with bounded labels."""

import re

from aiohttp import web
from aiohttp.test_utils import TestClient

from core.settings import Settings
from server.app import create_app
from tests.support.api import error_of, sign_up

Client = TestClient[web.Request, web.Application]


async def boom(request: web.Request) -> web.Response:
    raise RuntimeError("secret internals")


async def moved(request: web.Request) -> web.Response:
    raise web.HTTPFound("/healthz")


async def test_an_unexpected_exception_is_a_500_in_the_error_shape_and_counted(
    settings: Settings, aiohttp_client: object
) -> None:
    app = create_app(settings)
    app.router.add_get("/boom", boom)
    app.router.add_get("/moved", moved)
    api: Client = await aiohttp_client(app)  # type: ignore[operator]
    resp = await api.get("/boom")
    assert resp.status == 500
    assert await error_of(resp) == {"code": "internal_error", "message": "internal server error"}
    resp = await api.get("/moved", allow_redirects=False)
    assert resp.status == 302  # a redirect passes through untouched
    user = await sign_up(api)
    for method in ("PROPFIND", "MKCOL", "LOCK"):  # methods HTTP parsers know
        resp = await api.request(method, "/v1/feed", headers=user.auth)
        assert resp.status == 405
    text = await (await api.get("/metrics")).text()
    assert 'feed_http_requests_total{method="GET",route="/boom",status="500"} 1.0' in text
    assert 'feed_http_requests_total{method="GET",route="/moved",status="302"} 1.0' in text
    assert 'feed_http_requests_total{method="other",route="unmatched",status="405"} 3.0' in text
    methods = set(re.findall(r'feed_http_requests_total\{method="([^"]+)"', text))
    assert methods <= {"GET", "POST", "DELETE", "other"}
