"""APNs adapter: aioapns with token auth (a .p8 key), one long-lived client per process.

What aioapns 4.0 does not do and this module adds (read from its source):
- Its host is a class attribute of the protocol class: a subclass points it at APNS_URL
  (Apple's production or sandbox host, or the test stand-in).
- Each new connection gets its own provider-token signer, so every reconnect (aioapns
  closes a connection idle for 10 s) mints a new JWT; Apple refuses refreshing the token
  more than once per 20 minutes (TooManyProviderTokenUpdates). One signer is shared here.
- It never hands received bytes back to HTTP/2 flow control, so a connection stalls once
  about 64 KiB of error bodies have arrived (aioapns PR #75). Acknowledged here.
- It matches answers by the apns-id header and parses each DATA frame as a whole JSON
  document; an answer to a send that timed out crashes the connection (the future was
  cancelled). Answers are matched by stream here, bodies buffered, late answers dropped.
- It has no timeout: every send is bounded here, and an abandoned stream is reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import h2.errors
import h2.events
import h2.exceptions
from aioapns.common import NotificationRequest, NotificationResult, PushType
from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsKeyConnectionPool,
    APNsTLSClientProtocol,
    JWTAuthorizationHeaderProvider,
)
from aioapns.exceptions import ConnectionClosed, MaxAttemptsExceeded
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from core.settings import Settings, SettingsError
from push.providers import Outcome, client_ssl_context, http_reason, parse_retry_after

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 4096  # Apple's limit for alert and background pushes
MAX_COLLAPSE_ID_BYTES = 64
MAX_ERROR_BODY = 4096  # Apple's error bodies are tens of bytes
CLOSE_TIMEOUT = 2.0  # seconds close() waits for the TLS connections to shut down
DEVICE_TOKEN = re.compile(r"^[0-9A-Fa-f]{64,200}$")
# Apple's documented reasons: used as metrics labels as-is, anything else is http_<status>.
APPLE_REASONS = frozenset(
    {
        "BadCollapseId",
        "BadDeviceToken",
        "BadExpirationDate",
        "BadMessageId",
        "BadPriority",
        "BadTopic",
        "DeviceTokenNotForTopic",
        "DuplicateHeaders",
        "IdleTimeout",
        "InvalidPushType",
        "MissingDeviceToken",
        "MissingTopic",
        "PayloadEmpty",
        "TopicDisallowed",
        "BadCertificate",
        "BadCertificateEnvironment",
        "ExpiredProviderToken",
        "Forbidden",
        "InvalidProviderToken",
        "MissingProviderToken",
        "UnrelatedKeyIdInToken",
        "BadEnvironmentKeyInToken",
        "BadPath",
        "MethodNotAllowed",
        "ExpiredToken",
        "Unregistered",
        "PayloadTooLarge",
        "TooManyProviderTokenUpdates",
        "TooManyRequests",
        "InternalServerError",
        "ServiceUnavailable",
        "Shutdown",
    }
)
# The device (token) is gone or not ours: disable it.
DEVICE_REASONS = frozenset(
    {"Unregistered", "ExpiredToken", "BadDeviceToken", "DeviceTokenNotForTopic"}
)


@dataclass(frozen=True, slots=True)
class ApnsPush:
    token: str  # hex device token
    push_type: Literal["alert", "background"]
    payload: dict[str, Any]  # the JSON document, with its "aps" dictionary
    collapse_id: str | None  # apns-collapse-id, at most 64 bytes
    expiration: int  # unix seconds after which Apple stops trying (apns-expiration)

    def __post_init__(self) -> None:
        if self.collapse_id is not None and len(self.collapse_id.encode()) > MAX_COLLAPSE_ID_BYTES:
            raise ValueError("apns-collapse-id is limited to 64 bytes")

    @property
    def priority(self) -> int:
        # Apple requires 5 for background pushes (10 is refused or throttled).
        return 10 if self.push_type == "alert" else 5


class _Result(NotificationResult):
    __slots__ = ("retry_after",)

    def __init__(self, nid: str, status: str, reason: str | None, retry_after: float | None):
        super().__init__(nid, status, description=reason)
        self.retry_after = retry_after


class _Protocol(APNsTLSClientProtocol):
    """aioapns' protocol with the receive side replaced (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_received = self.loop.time()
        self._answers: dict[int, tuple[str, float | None, bytearray]] = {}

    def data_received(self, data: bytes) -> None:
        self.last_received = self.loop.time()
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.warning("APNs connection broke the HTTP/2 protocol: %s", exc)
            self.close()
            return
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                self._on_headers(event.stream_id, dict(event.headers or ()))
            elif isinstance(event, h2.events.DataReceived) and event.stream_id:
                self.conn.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id
                )
                answer = self._answers.get(event.stream_id)
                if answer is not None and len(answer[2]) < MAX_ERROR_BODY:
                    answer[2].extend(event.data or b"")
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                self._on_end(event.stream_id or 0, isinstance(event, h2.events.StreamReset))
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self.on_remote_settings_changed(event.changed_settings)  # type: ignore[arg-type]
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.on_connection_terminated(event)
        if self.transport is not None and not self.transport.is_closing():
            self.flush()

    def _on_headers(self, stream_id: int | None, headers: dict[bytes, bytes]) -> None:
        if stream_id in self.request_streams:
            status = headers.get(b":status", b"").decode("latin-1")
            retry_after = parse_retry_after(
                headers.get(b"retry-after", b"").decode("latin-1") or None
            )
            self._answers[stream_id] = (status, retry_after, bytearray())

    def _on_end(self, stream_id: int, reset: bool) -> None:
        nid = self.request_streams.pop(stream_id, None)
        if nid is None:
            return  # not one of ours, or abandoned after a timeout
        self.free_channels.release()
        status, retry_after, body = self._answers.pop(stream_id, ("", None, bytearray()))
        future = self.requests.pop(nid, None)
        if future is None or future.done():
            return
        if reset and not status:
            # Refused before an answer (e.g. too many streams): aioapns' pool retries this.
            future.set_exception(ConnectionClosed("stream reset by APNs"))
            return
        reason = None
        with contextlib.suppress(ValueError, AttributeError):
            reason = str(json.loads(bytes(body)).get("reason") or "") or None
        future.set_result(_Result(nid, status, reason, retry_after))

    def abandon(self, nid: str) -> bool:
        """The sender gave up on `nid` (timeout): forget it, reset its stream."""
        if self.requests.pop(nid, None) is None:
            return False
        stream_id = next((s for s, n in self.request_streams.items() if n == nid), None)
        if stream_id is not None:
            del self.request_streams[stream_id]
            self._answers.pop(stream_id, None)
            self.free_channels.release()
            with contextlib.suppress(h2.exceptions.H2Error):
                self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                if self.transport is not None and not self.transport.is_closing():
                    self.flush()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        # aioapns fails every future it still holds; one already done would raise.
        for nid, future in list(self.requests.items()):
            if future.done():
                del self.requests[nid]
        super().connection_lost(exc)


def _protocol_for(host: str, port: int) -> type[_Protocol]:
    class Protocol(_Protocol):
        APNS_SERVER = host
        APNS_PORT = port

    return Protocol


class _Pool(APNsKeyConnectionPool):
    """aioapns' token-auth pool with one signer shared by all its connections."""

    def __init__(
        self,
        *,
        key: str,
        key_id: str,
        team_id: str,
        topic: str,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
    ) -> None:
        super().__init__(
            key=key,
            key_id=key_id,
            team_id=team_id,
            topic=topic,
            max_connections=4,
            # Transport errors only (aioapns never retries an answer); the worker retries.
            max_connection_attempts=3,
            ssl_context=ssl_context,
        )
        self.protocol_class = self._protocol = _protocol_for(host, port)
        self._auth = JWTAuthorizationHeaderProvider(key=key, key_id=key_id, team_id=team_id)
        self.emptied = asyncio.Event()
        self.closed = False

    def discard_connection(self, connection: APNsBaseClientProtocol) -> None:
        # aioapns removes unconditionally; a connection lost while being set up was
        # never added.
        if connection in self.connections:
            super().discard_connection(connection)
        if not self.connections:
            self.emptied.set()

    async def create_connection(self) -> APNsBaseClientProtocol:
        if self.closed:
            # aioapns retries a send whose connection was closed under it: after
            # close() that must not open a new connection nobody will close.
            raise ConnectionClosed("the APNs sender is closed")

        def factory() -> _Protocol:
            return self._protocol(self.apns_topic, self.loop, self.discard_connection, self._auth)

        protocol: APNsBaseClientProtocol = await self._create_connection(factory)
        return protocol

    def abandon(self, nid: str, timeout: float) -> None:
        for connection in self.connections:
            if isinstance(connection, _Protocol) and connection.abandon(nid):
                # Silent for a whole timeout while a request waited: presumed dead, and
                # aioapns would keep it (its idle timer restarts on every write).
                if connection.loop.time() - connection.last_received >= timeout:
                    connection.close()
                return


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"https://{url}")
    try:
        port = parts.port or 443
    except ValueError:
        port = -1
    if parts.scheme != "https" or not parts.hostname or port < 0 or parts.path.strip("/"):
        raise SettingsError(f"APNS_URL must be https://host[:port], got {url!r}")
    return parts.hostname, port


class ApnsSender:
    """Sends ApnsPush through one aioapns pool; `send` never raises for APNs' or the
    network's doing, it returns an Outcome. Create it inside the running event loop."""

    def __init__(
        self,
        *,
        key_pem: str,
        key_id: str,
        team_id: str,
        topic: str,
        url: str,
        ca_file: str = "",
        timeout: float = 5.0,
    ) -> None:
        host, port = _host_port(url)
        self._timeout = timeout
        self._pool = _Pool(
            key=key_pem,
            key_id=key_id,
            team_id=team_id,
            topic=topic,
            host=host,
            port=port,
            ssl_context=client_ssl_context(ca_file, alpn=("h2",)),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ApnsSender | None:
        """None when no key is configured (APNS_KEY wins over APNS_KEY_FILE)."""
        key = settings.apns_key
        if not key and settings.apns_key_file:
            try:
                key = Path(settings.apns_key_file).read_text()
            except (OSError, UnicodeError) as exc:
                raise SettingsError(f"APNS_KEY_FILE cannot be read: {exc}") from None
        if not key:
            return None
        if not settings.apns_key_id or not settings.apns_team_id:
            raise SettingsError("APNS_KEY_ID and APNS_TEAM_ID are required with an APNs key")
        try:
            private = load_pem_private_key(key.encode(), password=None)
        except (ValueError, TypeError):
            raise SettingsError("APNS_KEY is not a PEM private key (a .p8 file)") from None
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise SettingsError("APNS_KEY must be an EC P-256 key (ES256)")
        return cls(
            key_pem=key,
            key_id=settings.apns_key_id,
            team_id=settings.apns_team_id,
            topic=settings.apns_topic,
            url=settings.apns_url,
            ca_file=settings.push_ca_file,
            timeout=settings.push_timeout_seconds,
        )

    async def send(self, push: ApnsPush) -> Outcome:
        if self._pool.closed:
            return Outcome("apns", "retry", None, "shutdown")
        if not DEVICE_TOKEN.fullmatch(push.token):
            return Outcome("apns", "invalid", None, "BadDeviceToken")
        # Measured as aioapns encodes it; Apple would answer 413 after a round trip.
        if len(json.dumps(push.payload, ensure_ascii=False).encode()) > MAX_PAYLOAD_BYTES:
            return Outcome("apns", "failed", None, "PayloadTooLarge")
        request = NotificationRequest(
            device_token=push.token,
            message=push.payload,
            # aioapns takes a TTL and sends now + TTL as apns-expiration.
            time_to_live=max(0, push.expiration - int(time.time())),
            priority=push.priority,
            collapse_key=push.collapse_id,
            push_type=PushType(push.push_type),
        )
        try:
            async with asyncio.timeout(self._timeout):
                result = await self._pool.send_notification(request)
        except TimeoutError:
            self._pool.abandon(request.notification_id, self._timeout)
            return Outcome("apns", "retry", None, "timeout")
        except (
            ApnsConnectionError,
            ConnectionClosed,
            MaxAttemptsExceeded,
            OSError,
            h2.exceptions.H2Error,
        ) as exc:
            log.debug("APNs transport error: %r", exc)
            return Outcome("apns", "retry", None, "connection")
        except Exception:
            log.exception("APNs send failed unexpectedly")
            return Outcome("apns", "retry", None, "error")
        return _outcome(result)

    async def close(self) -> None:
        """Close every connection and wait (bounded) until they are gone."""
        self._pool.closed = True
        if not self._pool.connections:
            return
        self._pool.emptied.clear()
        self._pool.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._pool.emptied.wait()


def _outcome(result: NotificationResult) -> Outcome:
    status = int(result.status) if str(result.status).isdigit() else None
    if status == 200:
        return Outcome("apns", "sent", 200, "ok")
    reason = result.description or ""
    retry_after = result.retry_after if isinstance(result, _Result) else None
    label = reason if reason in APPLE_REASONS else http_reason(status or 0)
    if status == 410 or reason in DEVICE_REASONS:
        return Outcome("apns", "invalid", status, label)
    if status is None or status == 429 or status >= 500:
        return Outcome("apns", "retry", status, label, retry_after)
    return Outcome("apns", "failed", status, label, retry_after)
