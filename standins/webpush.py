"""Web Push stand-in: a browser vendor's push service (RFC 8030) over HTTPS.

`create_subscription()` plays the browser: it makes the user agent's P-256 key pair and
auth secret and returns what PushSubscription.toJSON() returns. A POST to the endpoint
is checked as push services check it (VAPID per RFC 8292, TTL, Content-Encoding,
Urgency, Topic, size), then decrypted (aes128gcm, RFC 8188) with the subscription's
private key, so tests see the exact plaintext. Refusals use the statuses services use:
401 for a VAPID token that is missing, badly signed, for another audience or expired;
403 when it is signed by another key than the subscription's applicationServerKey.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

# http_ece ships no type information (and is not in pyproject's mypy overrides).
import http_ece  # type: ignore[import-untyped]
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import jwt as vapid_jwt

from standins import Inbox
from standins.https_site import HttpsSite
from standins.tls import LocalCA

MAX_BODY_BYTES = 4096
MAX_VAPID_LIFETIME = 24 * 3600
CLOCK_SKEW = 60
URGENCIES = frozenset({"very-low", "low", "normal", "high"})
TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
PATH_PREFIX = "/push/"


@dataclass(frozen=True, slots=True)
class WebPushAnswer:
    status: int  # 201, 404, 410, 413, 429, 500, ...
    retry_after: float | None = None
    delay: float = 0.0  # seconds before answering


@dataclass(frozen=True, slots=True)
class WebPushReceived:
    """A message that passed every check, decrypted, and what it was answered."""

    subscription_id: str
    endpoint: str
    headers: dict[str, str]  # lower-case names
    plaintext: bytes
    ttl: int
    urgency: str
    topic: str | None
    claims: dict[str, Any]  # the VAPID JWT's
    status: int
    received_at: float


@dataclass(frozen=True, slots=True)
class WebPushRefusal:
    status: int
    reason: str
    path: str
    headers: dict[str, str]
    received_at: float


@dataclass(frozen=True, slots=True)
class _Subscription:
    id: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    application_server_key: bytes | None


class _Refuse(Exception):
    """Refuse the request with this status and reason (control flow only)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class WebPushStandin(HttpsSite):
    def __init__(self, tls: LocalCA, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(tls, host, port)
        self.received: Inbox[WebPushReceived] = Inbox()
        self.refused: Inbox[WebPushRefusal] = Inbox()
        self._subscriptions: dict[str, _Subscription] = {}
        self._gone: set[str] = set()
        self._scripts: dict[str, collections.deque[WebPushAnswer]] = {}

    def create_subscription(self, application_server_key: str | None = None) -> dict[str, Any]:
        """A new subscription as PushSubscription.toJSON() gives it. With an
        `application_server_key` (base64url VAPID public key), only pushes signed by
        that key are accepted, as browsers bind a subscription to it."""
        sub_id = secrets.token_urlsafe(24)
        private_key = ec.generate_private_key(ec.SECP256R1())
        auth = secrets.token_bytes(16)
        server_key = b64url_decode(application_server_key) if application_server_key else None
        self._subscriptions[sub_id] = _Subscription(sub_id, private_key, auth, server_key)
        public = private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": self.endpoint(sub_id),
            "expirationTime": None,
            "keys": {"p256dh": b64url(public), "auth": b64url(auth)},
        }

    def endpoint(self, subscription_id: str) -> str:
        return f"{self.url}{PATH_PREFIX}{subscription_id}"

    def unsubscribe(self, endpoint: str) -> None:
        """The browser dropped it: further pushes get 410 Gone."""
        if self._subscriptions.pop(self._id(endpoint), None) is not None:
            self._gone.add(self._id(endpoint))

    def script(self, endpoint: str, *answers: WebPushAnswer) -> None:
        """Answers for the subscription (endpoint URL or id), given in order before
        falling back to 201."""
        self._scripts.setdefault(self._id(endpoint), collections.deque()).extend(answers)

    @staticmethod
    def _id(endpoint: str) -> str:
        return endpoint.rsplit("/", 1)[-1]

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(PATH_PREFIX + "{sub_id}", self._push)

    async def _push(self, request: web.Request) -> web.Response:
        now = time.time()
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = await request.read()
        try:
            sub, claims, (ttl, urgency, topic), plaintext = self._check(
                request.match_info["sub_id"], headers, body, now
            )
        except _Refuse as refusal:
            refusal_record = WebPushRefusal(
                refusal.status, refusal.reason, request.path, headers, now
            )
            self.refused.add(refusal_record)
            return web.json_response({"reason": refusal.reason}, status=refusal.status)
        queue = self._scripts.get(sub.id)
        answer = queue.popleft() if queue else WebPushAnswer(201)
        self.received.add(
            WebPushReceived(
                sub.id,
                self.endpoint(sub.id),
                headers,
                plaintext,
                ttl,
                urgency,
                topic,
                claims,
                answer.status,
                now,
            )
        )
        if answer.delay > 0:
            await asyncio.sleep(answer.delay)
        reply_headers = {"TTL": str(ttl)}
        if answer.status == 201:
            reply_headers["Location"] = f"{self.url}/message/{secrets.token_urlsafe(16)}"
        if answer.retry_after is not None:
            reply_headers["Retry-After"] = str(int(answer.retry_after))
        return web.Response(status=answer.status, headers=reply_headers)

    def _check(
        self, sub_id: str, headers: dict[str, str], body: bytes, now: float
    ) -> tuple[_Subscription, dict[str, Any], tuple[int, str, str | None], bytes]:
        sub = self._subscriptions.get(sub_id)
        if sub is None:
            raise _Refuse(410 if sub_id in self._gone else 404, "no_such_subscription")
        claims = self._check_vapid(headers.get("authorization"), sub, now)
        fields = _check_headers(headers)
        if len(body) > MAX_BODY_BYTES:
            raise _Refuse(413, "payload_too_large")
        return sub, claims, fields, _decrypt(sub, headers, body)

    def _check_vapid(
        self, authorization: str | None, sub: _Subscription, now: float
    ) -> dict[str, Any]:
        scheme, _, params = (authorization or "").partition(" ")
        if scheme.lower() != "vapid":
            raise _Refuse(401, "vapid_missing")
        parts: dict[str, str] = {}
        for item in params.split(","):
            name, sep, value = item.strip().partition("=")
            if sep:
                parts[name.strip().lower()] = value.strip()
        token, key = parts.get("t", ""), parts.get("k", "")
        try:
            header = json.loads(b64url_decode(token.split(".", 1)[0]))
            claims = vapid_jwt.decode(token, key)
        except (InvalidSignature, ValueError):
            raise _Refuse(401, "vapid_signature") from None
        if not isinstance(header, dict) or header.get("alg") != "ES256":
            raise _Refuse(401, "vapid_signature")
        if not isinstance(claims, dict):
            raise _Refuse(401, "vapid_claims")
        if (
            sub.application_server_key is not None
            and b64url_decode(key) != sub.application_server_key
        ):
            raise _Refuse(403, "vapid_key_mismatch")
        if claims.get("aud") != self.url:
            raise _Refuse(401, "vapid_audience")
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= now:
            raise _Refuse(401, "vapid_expired")
        if exp > now + MAX_VAPID_LIFETIME + CLOCK_SKEW:
            raise _Refuse(401, "vapid_exp_too_far")
        sub_claim = claims.get("sub")
        if not isinstance(sub_claim, str) or not sub_claim.startswith(("mailto:", "https:")):
            raise _Refuse(401, "vapid_subject")
        return claims


def _check_headers(headers: dict[str, str]) -> tuple[int, str, str | None]:
    ttl = headers.get("ttl")
    if ttl is None or not ttl.isdigit():
        raise _Refuse(400, "ttl_missing")
    urgency = headers.get("urgency", "normal")
    if urgency not in URGENCIES:
        raise _Refuse(400, "bad_urgency")
    topic = headers.get("topic")
    if topic is not None and not TOPIC.fullmatch(topic):
        raise _Refuse(400, "bad_topic")
    return int(ttl), urgency, topic


def _decrypt(sub: _Subscription, headers: dict[str, str], body: bytes) -> bytes:
    if not body:
        return b""  # a push without payload needs no encryption
    if headers.get("content-encoding") != "aes128gcm":
        raise _Refuse(415, "content_encoding")
    try:
        plaintext: bytes = http_ece.decrypt(
            body, private_key=sub.private_key, auth_secret=sub.auth, version="aes128gcm"
        )
    except (http_ece.ECEException, ValueError):
        raise _Refuse(400, "decryption_failed") from None
    return plaintext
