"""FCM adapter: Android pushes through Firebase Cloud Messaging's HTTP v1 API
(`POST /v1/projects/{project}/messages:send`), one message per registration token.

Authentication is an OAuth 2.0 access token of a service account (fcm_auth.py); a 401
means the token was revoked or expired early, so it is replaced and the message sent
again, once. Answers are read from FCM v1's error JSON: the FcmError `errorCode` in
`details` says what happened to the device, the top-level `status` is only the
canonical HTTP class (UNREGISTERED comes as NOT_FOUND, QUOTA_EXCEEDED as
RESOURCE_EXHAUSTED). The legacy API (server keys, `/fcm/send`) is gone and not spoken.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import orjson
from google.auth import exceptions as google_exceptions
from google.oauth2 import service_account

from core.settings import Settings, SettingsError
from push.providers import Outcome, client_ssl_context, http_reason, parse_retry_after
from push.providers.fcm_auth import (
    SCOPE,
    AccessTokens,
    LoopTransport,
    TokenError,
    read_bounded,
)

log = logging.getLogger(__name__)

# FCM counts the data and notification fields against 4096 bytes.
MAX_PAYLOAD_BYTES = 4096
MAX_TTL_SECONDS = 28 * 24 * 3600  # FCM refuses a longer android.ttl
MAX_ERROR_BODY = 16 * 1024
# Registration tokens are opaque; today ~150-200 characters of these.
REGISTRATION_TOKEN = re.compile(r"^[A-Za-z0-9_:\-]{32,1024}$")
PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")  # Google Cloud's rules
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
# FCM's documented error codes, and the canonical statuses its answers carry: both are
# used as metrics labels as they are, anything else becomes http_<status>.
FCM_ERROR_CODES = frozenset(
    {
        "UNSPECIFIED_ERROR",
        "INVALID_ARGUMENT",
        "UNREGISTERED",
        "SENDER_ID_MISMATCH",
        "QUOTA_EXCEEDED",
        "UNAVAILABLE",
        "INTERNAL",
        "THIRD_PARTY_AUTH_ERROR",
    }
)
RPC_STATUSES = frozenset(
    {
        "INVALID_ARGUMENT",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "NOT_FOUND",
        "RESOURCE_EXHAUSTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
    }
)
# The token is gone or belongs to another Firebase project: disable the device.
DEVICE_ERRORS = frozenset({"UNREGISTERED", "SENDER_ID_MISMATCH"})

Priority = Literal["NORMAL", "HIGH"]


@dataclass(frozen=True, slots=True)
class FcmMessage:
    token: str  # the app instance's registration token
    data: dict[str, str]  # handed to the app (FCM takes string values only)
    ttl: int  # seconds FCM keeps it for an offline phone
    priority: Priority = "NORMAL"
    # With a notification, Android shows it (title, body) when the app is in background.
    notification: tuple[str, str] | None = None
    collapse_key: str | None = None  # a newer message replaces a pending one

    def __post_init__(self) -> None:
        if self.ttl < 0:
            raise ValueError("ttl must not be negative")
        if self.priority not in ("NORMAL", "HIGH"):
            raise ValueError("priority must be NORMAL or HIGH")

    def payload_size(self) -> int:
        size = sum(len(k.encode()) + len(v.encode()) for k, v in self.data.items())
        if self.notification is not None:
            size += sum(len(part.encode()) for part in self.notification)
        return size

    def body(self) -> dict[str, Any]:
        """The `messages:send` request body."""
        android: dict[str, Any] = {
            "priority": self.priority,
            "ttl": f"{min(self.ttl, MAX_TTL_SECONDS)}s",  # a google.protobuf.Duration
        }
        if self.collapse_key is not None:
            android["collapse_key"] = self.collapse_key
        message: dict[str, Any] = {"token": self.token, "data": self.data, "android": android}
        if self.notification is not None:
            title, body = self.notification
            message["notification"] = {"title": title, "body": body}
        return {"message": message}


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    retry_after: float | None
    body: bytes


def _origin(url: str) -> str:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme != "https"
        or not parts.hostname
        or port == -1
        or parts.username is not None
        or parts.path.strip("/")
        or parts.query
    ):
        raise SettingsError(f"FCM_URL must be https://host[:port], got {url!r}")
    return f"https://{parts.netloc}"


def load_credentials(settings: Settings) -> dict[str, Any] | None:
    """The service-account key from FCM_CREDENTIALS or FCM_CREDENTIALS_FILE; None if
    neither is set."""
    text = settings.fcm_credentials
    if not text and settings.fcm_credentials_file:
        try:
            text = Path(settings.fcm_credentials_file).read_text()
        except OSError as exc:
            raise SettingsError(f"FCM_CREDENTIALS_FILE cannot be read: {exc}") from None
    if not text:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        raise SettingsError("FCM_CREDENTIALS is not JSON (a service-account key)") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise SettingsError('FCM_CREDENTIALS must be a key of "type": "service_account"')
    token_uri = info.get("token_uri")
    if not isinstance(token_uri, str) or urlsplit(token_uri).scheme != "https":
        # The assertion is a bearer credential for an hour: never over plain HTTP.
        raise SettingsError("FCM_CREDENTIALS: token_uri must be an https URL")
    return info


class FcmSender:
    """Sends FcmMessage on one aiohttp session; `send` never raises for FCM's, the token
    service's or the network's doing. Create it inside the running event loop."""

    def __init__(
        self,
        credentials: service_account.Credentials,
        *,
        project_id: str,
        url: str = "https://fcm.googleapis.com",
        ca_file: str = "",
        timeout: float = 5.0,
        max_connections: int = 100,
    ) -> None:
        if not PROJECT_ID.fullmatch(project_id):
            raise SettingsError(f"FCM_PROJECT_ID is not a Firebase project id: {project_id!r}")
        self.endpoint = f"{_origin(url)}/v1/projects/{project_id}/messages:send"
        self._timeout = timeout
        connector = aiohttp.TCPConnector(ssl=client_ssl_context(ca_file), limit=max_connections)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        transport = LoopTransport(self._session, asyncio.get_running_loop(), timeout)
        self.tokens = AccessTokens(credentials, transport, timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> FcmSender | None:
        """None when no service-account key is configured (FCM devices are skipped)."""
        info = load_credentials(settings)
        if info is None:
            return None
        try:
            credentials = service_account.Credentials.from_service_account_info(
                info, scopes=[SCOPE]
            )
        except (ValueError, google_exceptions.GoogleAuthError) as exc:
            raise SettingsError(f"FCM_CREDENTIALS is not a usable key: {exc}") from None
        project_id = settings.fcm_project_id or str(info.get("project_id") or "")
        return cls(
            credentials,
            project_id=project_id,
            url=settings.fcm_url,
            ca_file=settings.push_ca_file,
            timeout=settings.push_timeout_seconds,
            max_connections=max(settings.push_concurrency, 1),
        )

    async def send(self, msg: FcmMessage) -> Outcome:
        if self._session.closed:
            return Outcome("fcm", "retry", None, "shutdown")
        if not REGISTRATION_TOKEN.fullmatch(msg.token):
            return Outcome("fcm", "invalid", None, "INVALID_ARGUMENT")
        if msg.payload_size() > MAX_PAYLOAD_BYTES:
            return Outcome("fcm", "failed", None, "payload_too_large")
        body = orjson.dumps(msg.body())
        try:
            token = await self.tokens.get()
            answer = await self._post(body, token)
            if answer.status == 401 and not _error(answer.body)[0]:
                # Our access token, revoked or expired before its announced expiry: a new
                # one, once. (A 401 with an errorCode, THIRD_PARTY_AUTH_ERROR, is about
                # the APNs or Web Push credentials FCM relays with, not about ours.)
                log.info("FCM refused the access token; minting a new one")
                answer = await self._post(body, await self.tokens.get(refused=token))
        except TokenError as exc:
            return Outcome("fcm", "retry" if exc.retriable else "failed", None, exc.reason)
        except TimeoutError:
            return Outcome("fcm", "retry", None, "timeout")
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError):
            return Outcome("fcm", "retry", None, "tls")
        except (aiohttp.ClientError, OSError) as exc:
            log.debug("FCM transport error: %r", exc)
            return Outcome("fcm", "retry", None, "connection")
        return outcome(answer.status, answer.body, answer.retry_after)

    async def _post(self, body: bytes, token: str) -> _Answer:
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json; charset=utf-8",
        }
        async with (
            asyncio.timeout(self._timeout),
            self._session.post(
                self.endpoint, data=body, headers=headers, allow_redirects=False
            ) as resp,
        ):
            data = await read_bounded(resp, MAX_ERROR_BODY)
            return _Answer(resp.status, parse_retry_after(resp.headers.get("Retry-After")), data)

    async def close(self) -> None:
        self.tokens.close()
        await self._session.close()


def _error(body: bytes) -> tuple[str, str, str, list[str]]:
    """(errorCode, status, message, fields named by BadRequest violations) of an FCM v1
    error body; empty strings for what it does not say."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return "", "", "", []
    if not isinstance(error, dict):
        return "", "", "", []
    code, fields = "", []
    details = error.get("details")
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        if detail.get("@type") == FCM_ERROR_TYPE:
            code = str(detail.get("errorCode") or "")
        elif detail.get("@type") == BAD_REQUEST_TYPE:
            violations = detail.get("fieldViolations")
            for violation in violations if isinstance(violations, list) else []:
                if isinstance(violation, dict):
                    fields.append(str(violation.get("field") or ""))
    return code, str(error.get("status") or ""), str(error.get("message") or ""), fields


def _about_the_token(message: str, fields: list[str]) -> bool:
    """INVALID_ARGUMENT covers any bad field; only a bad token condemns the device."""
    return "message.token" in fields or "registration token" in message.lower()


def outcome(status: int, body: bytes, retry_after: float | None) -> Outcome:
    """What an answer of messages:send means for the device and the job."""
    if 200 <= status < 300:
        return Outcome("fcm", "sent", status, "ok")
    code, rpc_status, message, fields = _error(body)
    if code in FCM_ERROR_CODES:
        label = code
    elif rpc_status in RPC_STATUSES:
        label = rpc_status
    else:
        label = http_reason(status)
    if code in DEVICE_ERRORS:
        return Outcome("fcm", "invalid", status, label)
    if "INVALID_ARGUMENT" in (code, rpc_status) and _about_the_token(message, fields):
        return Outcome("fcm", "invalid", status, label)
    if status == 429 or status >= 500:
        return Outcome("fcm", "retry", status, label, retry_after)
    return Outcome("fcm", "failed", status, label, retry_after)
