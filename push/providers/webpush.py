"""Web Push adapter: RFC 8030 delivery, VAPID (RFC 8292), aes128gcm (RFC 8188).

pywebpush encrypts (WebPusher.encode) and py_vapid signs; the POST itself is made here on
one shared aiohttp session, not by pywebpush's send_async, because send_async follows
redirects (a push service, or whoever controls the endpoint's DNS, could redirect us to
an internal IP literal, which never passes through the resolver) and reads the whole
response body into memory (an endpoint that streams forever would exhaust it). The
other pywebpush traps are avoided by construction: TTL, Urgency and Topic are always set
explicitly (its TTL defaults to 0, so an offline device would never get the push) and
the VAPID claims are a fresh dict per send (webpush() mutates the dict it is given).

SSRF: the endpoint is checked before each send (https, no IP literal that is not
public) and the session's resolver refuses a host unless every address it resolves to
is public, at connect time, so DNS rebinding after registration cannot reach inside.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import re
import socket
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

# http_ece ships no type information (and is not in pyproject's mypy overrides).
from http_ece import ECEException  # type: ignore[import-untyped]
from py_vapid import Vapid02, VapidException
from pywebpush import WebPusher, WebPushException

from core.endpoints import EndpointRejected, check_webpush_endpoint, resolve_public
from core.settings import Settings, SettingsError
from push.providers import Outcome, client_ssl_context, http_reason, parse_retry_after

log = logging.getLogger(__name__)

Urgency = Literal["very-low", "low", "normal", "high"]
URGENCIES: frozenset[str] = frozenset({"very-low", "low", "normal", "high"})
TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")  # RFC 8030 5.4: 32 base64url characters
MAX_BODY_BYTES = 4096  # what push services accept (RFC 8030 7.2 requires at least this)
# One aes128gcm record: a 86-byte header (salt, record size, sender's key), the 16-byte
# tag and the 1-byte delimiter; past this pywebpush writes a second record (> 4096).
MAX_DATA_BYTES = MAX_BODY_BYTES - 86 - 16 - 1
VAPID_LIFETIME = 12 * 3600  # exp claim; services refuse more than 24 h
MAX_RESPONSE_BODY = 8192  # read to reuse the connection; anything longer is dropped


@dataclass(frozen=True, slots=True)
class WebPushMessage:
    endpoint: str  # the subscription's endpoint URL
    p256dh: str  # the user agent's P-256 public key, base64url
    auth: str  # the 16-byte auth secret, base64url
    data: bytes  # plaintext; at most MAX_DATA_BYTES (empty: a push without payload)
    ttl: int  # seconds the push service keeps it for an offline device
    urgency: Urgency = "normal"
    topic: str | None = None  # replaces an undelivered push with the same topic

    def __post_init__(self) -> None:
        if self.ttl < 0:
            raise ValueError("ttl must not be negative")
        if self.urgency not in URGENCIES:
            raise ValueError(f"urgency must be one of {sorted(URGENCIES)}")
        if self.topic is not None and not TOPIC.fullmatch(self.topic):
            raise ValueError("topic must be 1-32 base64url characters")


class PublicResolver(AbstractResolver):
    """Resolves through core.endpoints.resolve_public: a host with any non-public address
    raises EndpointRejected (the request fails before a connection is attempted)."""

    def __init__(self, allow_loopback: bool) -> None:
        self._allow_loopback = allow_loopback

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            addresses = await resolve_public(host, port, self._allow_loopback)
        except EndpointRejected as exc:
            if exc.code == "unresolvable":
                # A DNS failure may be transient: let aiohttp report it as one (retry).
                raise OSError(str(exc)) from None
            raise
        results: list[ResolveResult] = []
        for address in addresses:
            found = socket.AF_INET6 if ":" in address else socket.AF_INET
            if family in (socket.AF_UNSPEC, found):
                results.append(
                    ResolveResult(
                        hostname=host,
                        host=address,
                        port=port,
                        family=found,
                        proto=0,
                        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                    )
                )
        if not results:
            raise OSError(f"{host} has no address of the requested family")
        return results

    async def close(self) -> None:
        return None


def load_vapid(private_key: str | Vapid02) -> Any:
    """A py_vapid.Vapid02 from itself or from PKCS#8 PEM text (core.vapid's format)."""
    if isinstance(private_key, Vapid02):
        return private_key
    try:
        key = load_pem_private_key(private_key.encode(), password=None)
    except (ValueError, TypeError):
        raise SettingsError("the VAPID private key is not PEM") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SettingsError("the VAPID private key must be an EC P-256 key")
    return Vapid02(private_key=key)


def origin(url: str) -> str:
    """The endpoint's origin, the VAPID `aud` claim (scheme://host[:port])."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, 443) else "")


class WebPushSender:
    """Sends WebPushMessage on one aiohttp session. `vapid` is a py_vapid.Vapid02 (the
    deployment's key pair, see core/vapid.py). `send` never raises for the push
    service's or the network's doing. Create it inside the running event loop."""

    def __init__(
        self,
        vapid: Vapid02,
        *,
        subject: str,
        timeout: float = 5.0,
        ca_file: str = "",
        allow_loopback: bool = False,
        max_connections: int = 100,
    ) -> None:
        self._vapid = vapid
        self._subject = subject
        self._timeout = timeout
        self._allow_loopback = allow_loopback
        try:  # py_vapid checks `sub` only when signing: fail at start-up, not per push
            vapid.sign({"sub": subject, "aud": "https://push.example"})
        except VapidException:
            raise SettingsError("VAPID_SUBJECT must be a mailto: or https: URL") from None
        connector = aiohttp.TCPConnector(
            ssl=client_ssl_context(ca_file),
            resolver=PublicResolver(allow_loopback),
            limit=max_connections,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,  # never an HTTP(S)_PROXY from the environment
        )

    @classmethod
    def from_settings(cls, settings: Settings, vapid_private_key: str | Vapid02) -> WebPushSender:
        """`vapid_private_key`: PKCS#8 PEM text or a py_vapid.Vapid02."""
        return cls(
            load_vapid(vapid_private_key),
            subject=settings.vapid_subject,
            timeout=settings.push_timeout_seconds,
            ca_file=settings.push_ca_file,
            allow_loopback=settings.push_allow_loopback,
            max_connections=max(settings.push_concurrency, 1),
        )

    def _request(self, url: str, msg: WebPushMessage) -> tuple[dict[str, str], bytes | None]:
        claims = {
            "sub": self._subject,
            "aud": origin(url),
            "exp": int(time.time()) + VAPID_LIFETIME,
        }
        headers: dict[str, str] = dict(self._vapid.sign(claims))
        headers["TTL"] = str(msg.ttl)
        headers["Urgency"] = msg.urgency
        if msg.topic is not None:
            headers["Topic"] = msg.topic
        if not msg.data:
            return headers, None
        subscription = {"endpoint": url, "keys": {"p256dh": msg.p256dh, "auth": msg.auth}}
        body: bytes = WebPusher(subscription).encode(msg.data, "aes128gcm")["body"]
        headers["Content-Encoding"] = "aes128gcm"
        return headers, body

    async def send(self, msg: WebPushMessage) -> Outcome:
        if self._session.closed:
            return Outcome("webpush", "retry", None, "shutdown")
        try:
            url = check_webpush_endpoint(msg.endpoint, self._allow_loopback)
        except EndpointRejected as exc:
            return Outcome("webpush", "invalid", None, f"endpoint_{exc.code}")
        if len(msg.data) > MAX_DATA_BYTES:
            return Outcome("webpush", "failed", None, "payload_too_large")
        try:
            headers, body = self._request(url, msg)
        except VapidException:
            return Outcome("webpush", "failed", None, "vapid")
        except (ValueError, binascii.Error, WebPushException, ECEException):
            # p256dh/auth that are not valid keys: the subscription is unusable.
            return Outcome("webpush", "invalid", None, "bad_keys")
        try:
            async with (
                asyncio.timeout(self._timeout),
                self._session.post(url, data=body, headers=headers, allow_redirects=False) as resp,
            ):
                if resp.content_length is not None and resp.content_length <= MAX_RESPONSE_BODY:
                    await resp.read()
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            return Outcome("webpush", "retry", None, "timeout")
        except EndpointRejected as exc:
            return Outcome("webpush", "invalid", None, f"endpoint_{exc.code}")
        except aiohttp.ClientConnectorDNSError:
            return Outcome("webpush", "retry", None, "dns")
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError):
            return Outcome("webpush", "retry", None, "tls")
        except (aiohttp.ClientError, OSError) as exc:
            log.debug("Web Push transport error: %r", exc)
            return Outcome("webpush", "retry", None, "connection")
        return _outcome(status, retry_after)

    async def close(self) -> None:
        await self._session.close()


def _outcome(status: int, retry_after: float | None) -> Outcome:
    reason = http_reason(status)
    if 200 <= status < 300:
        return Outcome("webpush", "sent", status, "ok")
    if status in (404, 410):  # the subscription expired or was unsubscribed
        return Outcome("webpush", "invalid", status, reason)
    if status == 429 or status >= 500:
        return Outcome("webpush", "retry", status, reason, retry_after)
    return Outcome("webpush", "failed", status, reason, retry_after)
