"""OAuth 2.0 access tokens for FCM HTTP v1, minted from a Google service-account key.

google-auth does the protocol (the RS256 JWT assertion, the jwt-bearer grant, expiry
and the early-refresh margin); this module only runs it without blocking the event loop
and on our HTTP client. google-auth is synchronous (its asyncio variants are private or
experimental), so a refresh runs on one thread of our own, and google-auth's transport
interface is implemented by handing each request back to the event loop's aiohttp
session: one connection pool, our TLS trust (PUSH_CA_FILE) and our timeout. A token is
cached until google-auth calls it stale (minutes before it expires) and never minted by
more than one refresh at a time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
from google.auth import exceptions
from google.auth import transport as google_transport
from google.auth.credentials import TokenState
from google.oauth2 import service_account

log = logging.getLogger(__name__)

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
MAX_TOKEN_RESPONSE = 64 * 1024  # a token answer is a few hundred bytes


class TokenError(Exception):
    """No access token now. `retriable`: worth trying again later (network, timeout, the
    token service's own trouble); otherwise the key itself is refused."""

    def __init__(self, reason: str, *, retriable: bool) -> None:
        super().__init__(reason)
        self.reason, self.retriable = reason, retriable


async def read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or its first `limit` bytes: a peer cannot make us buffer more."""
    body = bytearray()
    async for chunk in response.content.iter_chunked(16 * 1024):
        body += chunk[: limit - len(body)]
        if len(body) >= limit:
            break
    return bytes(body)


class _Response(google_transport.Response):
    def __init__(self, status: int, headers: Mapping[str, str], data: bytes) -> None:
        self._status, self._headers, self._data = status, headers, data

    @property
    def status(self) -> int:
        return self._status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    @property
    def data(self) -> bytes:
        return self._data


class LoopTransport(google_transport.Request):
    """google-auth's transport, called on a worker thread, carried out by `session` on
    `loop`. Never call it on the loop's own thread: it waits for the loop."""

    def __init__(
        self, session: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop, timeout: float
    ) -> None:
        self._session, self._loop, self._timeout = session, loop, timeout

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _Response:
        try:
            future = asyncio.run_coroutine_threadsafe(
                self._request(url, method, body, headers), self._loop
            )
        except RuntimeError as exc:  # the loop is closed: shutting down
            raise exceptions.TransportError(str(exc)) from exc
        try:
            # The coroutine has its own timeout; this one only guards against a loop that
            # stopped running meanwhile.
            return future.result(self._timeout + 1.0)
        except TimeoutError:
            future.cancel()
            raise exceptions.TransportError("token request timed out") from None
        except concurrent.futures.CancelledError:
            # The loop cancelled it (shutting down): a failure of this request, not a
            # cancellation of whoever awaits the refresh.
            raise exceptions.TransportError("token request cancelled") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise exceptions.TransportError(repr(exc)) from exc

    async def _request(
        self, url: str, method: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> _Response:
        async with (
            asyncio.timeout(self._timeout),
            self._session.request(
                method, url, data=body, headers=dict(headers or {}), allow_redirects=False
            ) as response,
        ):
            data = await read_bounded(response, MAX_TOKEN_RESPONSE)
            return _Response(response.status, dict(response.headers), data)


class AccessTokens:
    """The current access token of one service account, refreshed when needed."""

    def __init__(
        self,
        credentials: service_account.Credentials,
        transport: LoopTransport,
        timeout: float,
    ) -> None:
        self._credentials = credentials
        self._transport = transport
        self._timeout = timeout
        self._lock = asyncio.Lock()
        # One thread: refreshes are serial, and a slow token service cannot take the
        # default executor (aiohttp's DNS lookups run there) away from everyone else.
        self._thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="fcm-token"
        )
        self.minted = 0  # access tokens obtained so far (tests and logs)

    def _usable(self, refused: str | None, *, just_minted: bool = False) -> str | None:
        """The cached token unless it is the refused one or stale (google-auth calls a
        token stale minutes before it expires). One just minted is used even if stale,
        so a token service granting short lifetimes does not stop every push."""
        credentials = self._credentials
        token: str | None = credentials.token
        state = credentials.token_state
        if token is None or token == refused or state == TokenState.INVALID:
            return None
        return token if state == TokenState.FRESH or just_minted else None

    async def get(self, refused: str | None = None) -> str:
        """A fresh access token. `refused`: one the service answered 401 to; a new one is
        minted unless another send already replaced it."""
        token = self._usable(refused)
        if token is not None:
            return token
        async with self._lock:
            token = self._usable(refused)
            if token is None:
                loop = asyncio.get_running_loop()
                try:
                    # If this wait times out the thread finishes on its own; the next
                    # caller's refresh is queued behind it and finds its token.
                    async with asyncio.timeout(self._timeout * 2):
                        await loop.run_in_executor(self._thread, self._refresh, refused)
                except TimeoutError:
                    raise TokenError("token_timeout", retriable=True) from None
                token = self._usable(refused, just_minted=True)
        if token is None:
            raise TokenError("token_expired", retriable=True)
        return token

    def _refresh(self, refused: str | None) -> None:
        """On the token thread only."""
        if self._usable(refused) is not None:
            return  # a refresh queued before this one already did it
        try:
            self._credentials.refresh(self._transport)
        except exceptions.TransportError as exc:
            log.warning("FCM access token: token service unreachable: %s", exc)
            raise TokenError("token_connection", retriable=True) from None
        except exceptions.GoogleAuthError as exc:
            # google-auth already retried what the token service called temporary.
            retriable = bool(getattr(exc, "retryable", False))
            log.warning("FCM access token refused (retriable: %s): %s", retriable, exc)
            raise TokenError("token_refused", retriable=retriable) from None
        except (TypeError, ValueError, KeyError) as exc:
            # An answer google-auth could not read (a 200 that is not the token JSON).
            log.warning("FCM access token: unreadable answer: %r", exc)
            raise TokenError("token_unreadable", retriable=True) from None
        self.minted += 1
        log.info("FCM access token minted, valid until %s", self._credentials.expiry)

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
