"""APNs stand-in: Apple's provider API (HTTP/2 over TLS, ALPN h2) served with the `h2`
library on asyncio, checking what Apple checks and answering with Apple's reasons.

It issues a token-auth key like Apple's developer portal does (an EC P-256 key as
PKCS#8 PEM, i.e. a .p8, with a key id and a team id). Accepted requests are recorded in
`received`, refused ones in `refused`; per device token, `script()` queues answers
(status, reason, retry_after) that are given before falling back to 200.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import secrets
import string
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes

from standins import Inbox
from standins.tls import LocalCA

MAX_PAYLOAD_BYTES = 4096
MAX_COLLAPSE_ID_BYTES = 64
TOKEN_MAX_AGE = 3600  # Apple: a provider token older than an hour is expired
TOKEN_UPDATE_INTERVAL = 20 * 60  # Apple: at most one new token per 20 minutes
DEVICE_TOKEN = re.compile(r"^[0-9A-Fa-f]{64,200}$")
DEVICE_PREFIX = "/3/device/"


@dataclass(frozen=True, slots=True)
class ApnsAnswer:
    status: int
    reason: str | None = None  # Apple's reason name, e.g. "Unregistered"
    retry_after: float | None = None  # sent as Retry-After (Apple does not; tests may)
    delay: float = 0.0  # seconds before answering (other streams are answered meanwhile)


@dataclass(frozen=True, slots=True)
class ApnsRequest:
    """A request that passed every check, and what it was answered."""

    token: str
    headers: dict[str, str]  # regular headers (apns-*, authorization, ...)
    payload: dict[str, Any]
    jwt_header: dict[str, Any]
    claims: dict[str, Any]
    status: int
    reason: str | None
    received_at: float


@dataclass(frozen=True, slots=True)
class ApnsRefusal:
    status: int
    reason: str
    path: str
    headers: dict[str, str]
    received_at: float


class _Refuse(Exception):
    """Refuse the request with Apple's status and reason (control flow only)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _random_id() -> str:
    return "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(10))


class ApnsStandin:
    def __init__(
        self,
        tls: LocalCA,
        *,
        topic: str = "com.example.feed",
        host: str = "127.0.0.1",
        port: int = 0,
        token_update_interval: float = TOKEN_UPDATE_INTERVAL,
    ) -> None:
        self.tls, self.topic, self.host = tls, topic, host
        self.key_id, self.team_id = _random_id(), _random_id()
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.key_pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        self.token_update_interval = token_update_interval
        self.received: Inbox[ApnsRequest] = Inbox()
        self.refused: Inbox[ApnsRefusal] = Inbox()
        self._port = port
        self._scripts: dict[str, collections.deque[ApnsAnswer]] = {}
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._all_closed = asyncio.Event()
        self._current_iat: int | None = None
        self._iat_since = 0.0

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self._port}"

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def script(self, token: str, *answers: ApnsAnswer) -> None:
        """Answers for `token`, given in order before falling back to 200."""
        self._scripts.setdefault(token.lower(), collections.deque()).extend(answers)

    def write_key(self, path: Path) -> Path:
        """Write the .p8 (what APNS_KEY_FILE points at)."""
        path.write_text(self.key_pem)
        path.chmod(0o600)
        return path

    def make_token(
        self, *, iat: int | None = None, kid: str | None = None, iss: str | None = None
    ) -> str:
        """A provider JWT signed with the issued key (tests forge stale or wrong ones)."""
        claims = {"iss": iss or self.team_id, "iat": int(time.time()) if iat is None else iat}
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": kid or self.key_id})

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self),
            self.host,
            self._port,
            ssl=self.tls.server_context(alpn=["h2"]),
        )
        self._port = self._server.sockets[0].getsockname()[1]

    def drop_connections(self) -> None:
        """Say GOAWAY and close every client connection (as Apple does now and then)."""
        for connection in list(self._connections):
            connection.goaway()

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        self._all_closed.clear()
        self.drop_connections()
        await self._server.wait_closed()
        if self._connections:  # wait for connection_lost of each, after its TLS shutdown
            async with asyncio.timeout(5):
                await self._all_closed.wait()
        self._server = None

    def _forget(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        if not self._connections:
            self._all_closed.set()

    async def __aenter__(self) -> ApnsStandin:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def answer(self, headers: list[tuple[str, str]], body: bytes, size: int) -> _Reply:
        """Check one request as Apple does; record it; choose the answer."""
        now = time.time()
        flat = dict(headers)
        apns_id = flat.get("apns-id") or str(uuid.uuid4()).upper()
        try:
            token, jwt_header, claims, payload = self._check(headers, flat, body, size, now)
        except _Refuse as refusal:
            regular = {k: v for k, v in flat.items() if not k.startswith(":")}
            self.refused.add(
                ApnsRefusal(refusal.status, refusal.reason, flat.get(":path", ""), regular, now)
            )
            return _Reply(refusal.status, apns_id, refusal.reason)
        queue = self._scripts.get(token.lower())
        chosen = queue.popleft() if queue else ApnsAnswer(200)
        regular = {k: v for k, v in flat.items() if not k.startswith(":")}
        self.received.add(
            ApnsRequest(
                token, regular, payload, jwt_header, claims, chosen.status, chosen.reason, now
            )
        )
        return _Reply(chosen.status, apns_id, chosen.reason, chosen.retry_after, chosen.delay)

    def _check(
        self,
        headers: list[tuple[str, str]],
        flat: dict[str, str],
        body: bytes,
        size: int,
        now: float,
    ) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
        if "apns-id" in flat and not _is_uuid(flat["apns-id"]):
            raise _Refuse(400, "BadMessageId")
        if len(flat) != len(headers):
            raise _Refuse(400, "DuplicateHeaders")
        if flat.get(":method") != "POST":
            raise _Refuse(405, "MethodNotAllowed")
        path = flat.get(":path", "")
        if not path.startswith(DEVICE_PREFIX):
            raise _Refuse(404, "BadPath")
        token = path[len(DEVICE_PREFIX) :]
        if not token:
            raise _Refuse(400, "MissingDeviceToken")
        jwt_header, claims = self._check_provider_token(flat.get("authorization"), now)
        push_type = self._check_headers(flat)
        payload = self._check_payload(push_type, body, size)
        if not DEVICE_TOKEN.fullmatch(token):
            raise _Refuse(400, "BadDeviceToken")
        return token, jwt_header, claims, payload

    def _check_headers(self, flat: dict[str, str]) -> str:
        topic = flat.get("apns-topic")
        if not topic:
            raise _Refuse(400, "MissingTopic")
        if topic != self.topic:
            raise _Refuse(400, "TopicDisallowed")
        push_type = flat.get("apns-push-type")
        if push_type not in ("alert", "background"):
            raise _Refuse(400, "InvalidPushType")
        priority = flat.get("apns-priority", "10")
        if priority not in ("1", "5", "10") or (push_type == "background" and priority != "5"):
            raise _Refuse(400, "BadPriority")
        collapse_id = flat.get("apns-collapse-id")
        if collapse_id is not None and len(collapse_id.encode()) > MAX_COLLAPSE_ID_BYTES:
            raise _Refuse(400, "BadCollapseId")
        if not flat.get("apns-expiration", "0").isdigit():
            raise _Refuse(400, "BadExpirationDate")
        return push_type

    @staticmethod
    def _check_payload(push_type: str, body: bytes, size: int) -> dict[str, Any]:
        if size > MAX_PAYLOAD_BYTES:
            raise _Refuse(413, "PayloadTooLarge")
        payload = _json_object(body)
        aps = payload.get("aps") if payload is not None else None
        if payload is None or not isinstance(aps, dict):
            raise _Refuse(400, "PayloadEmpty")
        if push_type == "background" and (
            aps.get("content-available") != 1 or {"alert", "sound", "badge"} & aps.keys()
        ):
            raise _Refuse(400, "InvalidPushType")  # a background push must be silent
        return payload

    def _check_provider_token(
        self, authorization: str | None, now: float
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Refuse(403, "MissingProviderToken")
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token,
                self._key.public_key(),
                algorithms=["ES256"],
                options={"verify_iat": False, "require": ["iss", "iat"]},
            )
        except jwt.PyJWTError:
            raise _Refuse(403, "InvalidProviderToken") from None
        iat = claims.get("iat")
        if header.get("kid") != self.key_id or claims.get("iss") != self.team_id:
            raise _Refuse(403, "InvalidProviderToken")
        if not isinstance(iat, int) or iat > now + 1:
            raise _Refuse(403, "InvalidProviderToken")
        if iat < now - TOKEN_MAX_AGE:
            raise _Refuse(403, "ExpiredProviderToken")
        if self._current_iat is None or iat > self._current_iat:
            if self._current_iat is not None and now - self._iat_since < self.token_update_interval:
                raise _Refuse(429, "TooManyProviderTokenUpdates")
            self._current_iat, self._iat_since = iat, now
        return header, claims


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass(slots=True)
class _Reply:
    status: int
    apns_id: str
    reason: str | None = None
    retry_after: float | None = None
    delay: float = 0.0

    def encode(self) -> tuple[list[tuple[str, str]], bytes]:
        headers = [(":status", str(self.status)), ("apns-id", self.apns_id)]
        if self.retry_after is not None:
            headers.append(("retry-after", str(int(self.retry_after))))
        if self.status == 200:
            return headers, b""
        error: dict[str, Any] = {"reason": self.reason or "InternalServerError"}
        if self.status == 410:
            error["timestamp"] = int(time.time() * 1000)
        body = json.dumps(error).encode()
        headers += [("content-type", "application/json"), ("content-length", str(len(body)))]
        return headers, body


@dataclass(slots=True)
class _Stream:
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)
    size: int = 0


class _Connection(asyncio.Protocol):
    """One client connection: the h2 state machine, and replies waiting for window."""

    def __init__(self, standin: ApnsStandin) -> None:
        self.standin = standin
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.outgoing: dict[int, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            transport.close()  # Apple speaks HTTP/2 only, negotiated by ALPN
            return
        self.standin._connections.add(self)
        self.conn.initiate_connection()
        self.conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.standin._forget(self)

    def flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.conn.data_to_send())

    def goaway(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.conn.close_connection()
        self.flush()
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, ConnectionTerminated):
                self.flush()
                if self.transport is not None:
                    self.transport.close()
                return
            self._on_event(event)
        self.flush()

    def _on_event(self, event: Event) -> None:
        stream_id = getattr(event, "stream_id", None) or 0
        if isinstance(event, RequestReceived) and stream_id:
            self.streams[stream_id] = _Stream(list(event.headers or ()))  # type: ignore[arg-type]
        elif isinstance(event, DataReceived) and stream_id:
            self.conn.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
            stream = self.streams.get(stream_id)
            if stream is not None:
                chunk = event.data or b""
                stream.size += len(chunk)
                # Keep one byte past the limit: enough to know it was too large.
                stream.body.extend(chunk[: max(0, MAX_PAYLOAD_BYTES + 1 - len(stream.body))])
        elif isinstance(event, StreamEnded) and stream_id:
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                reply = self.standin.answer(stream.headers, bytes(stream.body), stream.size)
                if reply.delay > 0:
                    asyncio.get_running_loop().call_later(
                        reply.delay, self._reply, stream_id, reply
                    )
                else:
                    self._reply(stream_id, reply)
        elif isinstance(event, StreamReset) and stream_id:
            self.streams.pop(stream_id, None)
            self.outgoing.pop(stream_id, None)
        elif isinstance(event, WindowUpdated):
            self._send_outgoing()

    def _reply(self, stream_id: int, reply: _Reply) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        headers, body = reply.encode()
        try:
            self.conn.send_headers(stream_id, headers, end_stream=not body)
        except H2Error:
            return  # the client reset the stream meanwhile
        if body:
            self.outgoing[stream_id] = body
            self._send_outgoing()
        if reply.delay > 0:  # answered from a timer, not from data_received
            self.flush()

    def _send_outgoing(self) -> None:
        """Send what flow control allows; the rest waits for a WINDOW_UPDATE."""
        for stream_id, body in list(self.outgoing.items()):
            try:
                while body:
                    window = self.conn.local_flow_control_window(stream_id)
                    size = min(window, self.conn.max_outbound_frame_size, len(body))
                    if size <= 0:
                        break
                    self.conn.send_data(stream_id, body[:size], end_stream=size == len(body))
                    body = body[size:]
            except H2Error:
                body = b""  # the stream is gone
            if body:
                self.outgoing[stream_id] = body
            else:
                del self.outgoing[stream_id]
