"""core/aiohttp_internals.py is the fence around what we use of aiohttp beyond its public
API. These tests fail when one of those names goes away or changes the way we rely on it
(an aiohttp upgrade starts here), when aiohttp is not the minor version pyproject.toml
pins, and when code outside the fence reaches into aiohttp's internals."""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from collections.abc import Callable
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer

from core import aiohttp_internals as internals
from server.http.fast_feed import FeedFront
from tests.support.env import ROOT

# Product packages, and the test support that serves them: neither may reach past the fence.
CHECKED = ["core", "server", "gateway", "fanout", "push", "web", "tests/support"]
# aiohttp's public surface: the package, aiohttp.web, its ABCs and its test utilities.
PUBLIC_MODULES = {"aiohttp", "aiohttp.web", "aiohttp.abc", "aiohttp.test_utils"}
# Private names we use, each listed in INTERNALS; allowed outside the fence only where the
# entry says (tests/support overrides TestServer's).
PRIVATE_NAMES = re.compile(
    r"\b(_make_server|_make_runner|_kwargs|_backlog|_root|server\._loop|_runner\.server)\b"
)
ALLOWED = {
    "tests/support/api_server.py": {"_make_runner"},
    "tests/support/gateway_server.py": {"_root"},
}


def pinned_minor() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pin = next(d for d in project["dependencies"] if d.startswith("aiohttp"))
    found = re.fullmatch(r"aiohttp>=(\d+)\.(\d+)(?:\.\d+)?,<(\d+)\.(\d+)", pin)
    assert found, f"aiohttp must be pinned to one minor version, got {pin!r}"
    major, minor, next_major, next_minor = map(int, found.groups())
    assert (next_major, next_minor) == (major, minor + 1), pin
    return f"{major}.{minor}."


def test_aiohttp_is_the_pinned_minor_version_the_fence_was_checked_against() -> None:
    minor = pinned_minor()
    assert aiohttp.__version__.startswith(minor)
    assert f"/v{minor}" in internals.UPSTREAM  # the links name the version checked


def params(function: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(function).parameters)


def test_the_parser_exceptions_exist_and_share_their_root() -> None:
    for error in (
        internals.BadHttpMethod,
        internals.InvalidURLError,
        internals.LineTooLong,
        internals.PayloadEncodingError,
    ):
        assert issubclass(error, internals.HttpProcessingError), error
    assert internals.HttpProcessingError().code == 0  # a status is what handle_error gets
    assert issubclass(internals.HttpProcessingError, Exception)


def test_server_software_is_what_aiohttp_sends() -> None:
    assert isinstance(internals.SERVER_SOFTWARE, str)
    assert f"aiohttp/{aiohttp.__version__}" in internals.SERVER_SOFTWARE


def test_handle_error_keeps_the_signature_our_override_has() -> None:
    got = params(web.RequestHandler.handle_error)
    assert list(got) == ["self", "request", "status", "exc", "message"]
    assert (got["status"].default, got["exc"].default, got["message"].default) == (500, None, None)
    ours = params(internals.request_handler)  # sanity: the fence's own helper
    assert list(ours) == ["server", "handler_class"]
    from core.http_errors import ShapedErrorsHandler

    assert list(params(ShapedErrorsHandler.handle_error)) == list(got)


async def test_a_server_builds_its_handlers_from_its_loop_and_kwargs() -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    server = web.Server(handler, keepalive_timeout=7.0)
    assert server._loop is asyncio.get_running_loop()
    assert server._kwargs == {"keepalive_timeout": 7.0}
    init = params(web.RequestHandler.__init__)
    assert (
        list(init)[:2] == ["self", "manager"]
        and init["loop"].kind is inspect.Parameter.KEYWORD_ONLY
    )
    made = internals.request_handler(server, web.RequestHandler)
    assert type(made) is web.RequestHandler and isinstance(made, asyncio.Protocol)
    assert made._keepalive_timeout == 7.0  # the kwargs reached it


class Recorder:
    """Stands in for the runner's web.Server, as FeedFront does."""

    def __init__(self, server: web.Server) -> None:
        self.server = server
        self.calls: list[str] = []

    def __call__(self) -> asyncio.Protocol:
        return self.server()

    def pre_shutdown(self) -> None:
        self.calls.append("pre_shutdown")
        self.server.pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:
        self.calls.append("shutdown")
        await self.server.shutdown(timeout)


async def test_a_runner_builds_its_server_through_the_hook_and_shuts_it_down_by_two_calls() -> None:
    recorders: list[Recorder] = []

    class Hooked(internals.ServerHookRunner):
        def wrap_server(self, server: web.Server) -> web.Server:
            recorders.append(Recorder(super().wrap_server(server)))
            return recorders[-1]  # type: ignore[return-value]

    assert inspect.iscoroutinefunction(web.AppRunner._make_server)
    assert list(params(web.AppRunner._make_server)) == ["self"]
    runner = Hooked(web.Application())
    await runner.setup()
    assert cast(object, runner.server) is recorders[0]  # the Recorder, typed as web.Server
    await runner.cleanup()
    assert recorders[0].calls == ["pre_shutdown", "shutdown"]
    # FeedFront offers both with web.Server's signatures.
    for name in ("pre_shutdown", "shutdown"):
        ours, theirs = (
            [(p.name, p.kind, p.default) for p in params(getattr(cls, name)).values()]
            for cls in (FeedFront, web.Server)
        )
        assert ours == theirs, name
        assert inspect.iscoroutinefunction(getattr(FeedFront, name)) == (
            inspect.iscoroutinefunction(getattr(web.Server, name))
        )


async def test_a_protocol_site_serves_through_its_factory_and_stops_like_any_site() -> None:
    assert {"_runner", "_server", "_backlog"} <= set(web.BaseSite.__slots__)
    made: list[asyncio.Protocol] = []

    class Counting(internals.ProtocolSite):
        def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
            def factory() -> asyncio.Protocol:
                made.append(server())
                return made[-1]

            return factory

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = Counting(runner, "127.0.0.1", 0)
    await site.start()
    try:
        assert site.port != 0 and site.name == f"http://127.0.0.1:{site.port}"
        assert site in runner.sites
        async with aiohttp.ClientSession() as http, http.get(site.name) as resp:
            assert await resp.text() == "hi"
        assert len(made) == 1
    finally:
        await runner.cleanup()
    assert site not in runner.sites


def test_the_test_servers_hooks_exist() -> None:
    assert list(params(TestServer._make_runner)) == ["self", "kwargs"]
    assert inspect.iscoroutinefunction(TestServer._make_runner)
    assert "self._root" in inspect.getsource(BaseTestServer.__init__)
    assert "self._root" in inspect.getsource(BaseTestServer.make_url)


def test_every_internal_is_listed_with_why_and_an_upstream_link() -> None:
    assert internals.INTERNALS
    for entry in internals.INTERNALS:
        assert entry.why and entry.used_by, entry.name
        assert entry.upstream.startswith(internals.UPSTREAM) or "github.com/aio-libs" in (
            entry.upstream
        ), entry.name


def python_files() -> list[Any]:
    files = []
    for folder in CHECKED:
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_outside_the_fence_reaches_into_aiohttp(path: Any) -> None:
    relative = str(path.relative_to(ROOT))
    if relative == "core/aiohttp_internals.py":
        return  # the fence itself
    source = path.read_text()
    imported = set(re.findall(r"^\s*(?:from|import) (aiohttp[\w.]*)", source, re.MULTILINE))
    assert imported <= PUBLIC_MODULES, f"{relative} imports {imported - PUBLIC_MODULES}"
    used = {match.group(0) for match in PRIVATE_NAMES.finditer(source)}
    assert used <= ALLOWED.get(relative, set()), f"{relative} uses {used}"
