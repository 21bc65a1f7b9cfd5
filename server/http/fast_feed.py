"""The API server's first protocol on every connection. It answers GET /v1/feed, the read
that dominates traffic, itself: one task and one write per request, without aiohttp's
request, response, middleware and router (about half the server's CPU per page). Every
other request, and every feed request it is not sure of (server/http/feed_head.py), a
token or parameter that does not check out included, is handed with the bytes already
read to aiohttp's RequestHandler, which then owns the connection for good and answers
it with the same handlers, errors and metrics as ever. So refusals are always
aiohttp's, and this protocol only ever writes a page or an unexpected failure."""

from __future__ import annotations

import asyncio
import logging
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

from aiohttp import web

from core.aiohttp_internals import SERVER_SOFTWARE
from core.http_errors import ShapedErrorsRunner
from core.service import hand_over
from server.auth import verified_user
from server.context import CTX
from server.feed.home import FEED, page_body
from server.http import validation as v
from server.http.errors import ApiError, failure
from server.http.feed_head import MAX_HEAD, FeedRequest, maybe_feed, parse_head
from server.http.middleware import FEED_ROUTE, observe

log = logging.getLogger(__name__)

_SERVER = SERVER_SOFTWARE.encode()


class FeedFront:
    """The runner's server (what a site calls for each accepted connection, and what the
    runner shuts down): our protocol first, aiohttp's web.Server behind it."""

    def __init__(self, app: web.Application, http: web.Server) -> None:
        self.http = http
        self.feed = app[FEED]
        self.signer = app[CTX].signer
        # As aiohttp's (core.service.app_runner): idle, or a head still arriving, that long.
        self.keepalive = app[CTX].settings.http_keepalive_seconds
        self.app = app
        self.protocols: set[FrontProtocol] = set()  # open, or still answering
        self.closing = False
        self._date = (0, b"")

    def __call__(self) -> FrontProtocol:
        return FrontProtocol(self)

    def date(self) -> bytes:
        """The Date header's value, formatted once a second."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode())
        return self._date[1]

    def pre_shutdown(self) -> None:
        """The listening sockets are closed: idle connections go now, busy ones after
        their answer (with Connection: close)."""
        self.closing = True
        self.http.pre_shutdown()
        for protocol in list(self.protocols):
            protocol.close_if_idle()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - web.Server's
        await asyncio.gather(self.http.shutdown(timeout), self._drain(timeout))

    async def _drain(self, bound: float | None) -> None:
        """Lets the answers in flight finish, bounded, then closes what is left."""
        tasks = [p.task for p in self.protocols if p.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=bound)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for protocol in list(self.protocols):
            protocol.abort()


class FrontRunner(ShapedErrorsRunner):
    """An AppRunner whose sites (TCPSite, SockSite, the test server's) accept through
    FeedFront; with FEED_FAST_PATH=false, straight through aiohttp's web.Server."""

    def wrap_server(self, server: web.Server) -> web.Server:
        http = super().wrap_server(server)  # the app has started: FEED and CTX exist
        if not self.app[CTX].settings.feed_fast_path:
            return http
        return cast(web.Server, FeedFront(self.app, http))


class FrontProtocol(asyncio.Protocol):
    __slots__ = ("_buf", "_front", "_last", "_lost", "_paused", "_timer", "_transport", "task")

    def __init__(self, front: FeedFront) -> None:
        self._front = front
        self._buf = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0  # loop time of the last request or answer
        self._paused = False
        self._lost = False
        self.task: asyncio.Task[None] | None = None  # the request being answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._front.protocols.add(self)
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._timer = loop.call_at(self._last + self._front.keepalive, self._idle_check)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._stop_timer()
        if self.task is None:
            self._front.protocols.discard(self)

    def eof_received(self) -> bool:
        return False  # HTTP/1.1 has no half-close: an answer in flight is dropped

    def data_received(self, data: bytes) -> None:
        self._buf = self._buf + data if self._buf else data
        if self.task is None:
            self._next()
        elif len(self._buf) > MAX_HEAD and not self._paused:
            assert self._transport is not None
            self._transport.pause_reading()  # pipelined past a head: wait for the answer
            self._paused = True

    def close_if_idle(self) -> None:
        if self.task is None and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _next(self) -> None:
        """Answers the next buffered request, hands the connection to aiohttp, or waits
        for more of the head."""
        buf = self._buf
        if not buf:
            return
        if self._front.closing:  # shutting down: aiohttp's connections are closed already
            assert self._transport is not None
            self._transport.close()
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if not maybe_feed(buf) or len(buf) > MAX_HEAD or b"\n\n" in buf or broken(buf):
                self._hand_off()
            return
        small = end + 4 <= MAX_HEAD  # aiohttp's to refuse or read otherwise
        request = parse_head(buf[:end]) if small and maybe_feed(buf) else None
        args = self._admit(request) if request is not None else None
        if args is None:
            self._hand_off()
            return
        self._buf = buf[end + 4 :]
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        assert request is not None
        self.task = loop.create_task(self._answer(*args, keep_alive=request.keep_alive))

    def _admit(self, request: FeedRequest) -> tuple[int, int | None, int] | None:
        """(user, before, limit), or None: aiohttp refuses it, with the usual error."""
        try:
            user = verified_user(self._front.signer, request.authorization)
            if user is None:
                return None
            limit = v.limit_value(request.limit)
            before = v.cursor_value(request.cursor, "feed")
        except ApiError:
            return None
        return user, before[0] if before else None, limit

    async def _answer(self, user: int, before: int | None, limit: int, keep_alive: bool) -> None:
        front = self._front
        started = time.perf_counter()
        headers: dict[str, str] | None = None
        try:
            page = await front.feed.page(user, before, limit)
            status, body = 200, page_body(page, cursor=True)
        except Exception as exc:  # noqa: BLE001 - as the middleware: a 500 in our shape
            status, body, headers = failure(exc, "GET", FEED_ROUTE)
        observe(front.app, "GET", FEED_ROUTE, status, time.perf_counter() - started)
        keep_alive = keep_alive and not front.closing
        try:
            self._write(status, body, headers, keep_alive)
        except Exception:  # logged; the connection closes: never a client left waiting
            log.exception("feed answer to user %d not written", user)
            keep_alive = False
        self.task = None
        if self._lost:
            front.protocols.discard(self)
        elif not keep_alive:
            assert self._transport is not None
            self._transport.close()
        else:
            self._last = asyncio.get_running_loop().time()
            if self._paused:
                assert self._transport is not None
                self._paused = False
                self._transport.resume_reading()
            self._next()

    def _write(
        self, status: int, body: bytes, headers: dict[str, str] | None, keep_alive: bool
    ) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # the client left while its page was read
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (
            status,
            HTTPStatus(status).phrase.encode(),
            len(body),
        )
        tail = b"Date: %s\r\nServer: %s\r\n%s%s\r\n" % (
            self._front.date(),
            _SERVER,
            extra.encode("latin-1"),
            b"" if keep_alive else b"Connection: close\r\n",
        )
        transport.writelines((head, tail, body))

    def _hand_off(self) -> None:
        """aiohttp takes the connection over as if it had accepted it, bytes included."""
        self._stop_timer()
        self._front.protocols.discard(self)
        transport = self._transport
        assert transport is not None
        if self._paused:
            self._paused = False
            transport.resume_reading()
        data, self._buf = self._buf, b""
        hand_over(transport, self._front.http(), data)

    def _idle_check(self) -> None:
        """Closes a connection idle for HTTP_KEEPALIVE_SECONDS (a head still arriving
        counts as idle); one timer per connection, moved on only when it fires (not
        re-armed per request)."""
        loop = asyncio.get_running_loop()
        due = self._last + self._front.keepalive
        if self.task is None and loop.time() >= due:
            self._timer = None
            assert self._transport is not None
            self._transport.close()
            return
        self._timer = loop.call_at(max(due, loop.time() + 1.0), self._idle_check)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def broken(partial: bytes) -> bool:
    """Whether an unfinished head already holds what no head may: a NUL, or a CR not
    followed by LF (a CR at the very end may yet be). Such a head can never end in
    CRLFCRLF as this path waits for, so aiohttp gets it now and refuses it, instead of
    the connection being held until its client gives up."""
    settled = partial[:-1] if partial.endswith(b"\r") else partial
    return b"\0" in partial or b"\r" in settled.replace(b"\r\n", b"")
