"""FCM stand-in: Google's OAuth 2.0 token endpoint and Firebase Cloud Messaging's HTTP v1
`messages:send`, over HTTPS, checking what Google checks and answering in its JSON.

It issues a service-account key as the Firebase console does (an RSA key, its id, the
account's e-mail, the project, and a `token_uri` pointing here). The token endpoint takes
the jwt-bearer grant: the RS256 assertion must verify against that key and carry the
account as `iss`, Google's token URL as `aud`, the messaging scope and a lifetime of at
most an hour. `messages:send` needs one of the access tokens it issued, unexpired, and a
valid v1 message. Accepted messages are recorded in `received`, refused requests in
`refused`; per registration token, `script()` queues answers given before the default 200.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import secrets
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from standins import Inbox
from standins.https_site import HttpsSite
from standins.tls import LocalCA

# What google-auth (and every Google client) puts in `aud`, whichever token_uri it posts to.
GOOGLE_OAUTH_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SCOPES = frozenset(
    {
        "https://www.googleapis.com/auth/firebase.messaging",
        "https://www.googleapis.com/auth/cloud-platform",
    }
)
MAX_ASSERTION_LIFETIME = 3600
CLOCK_SKEW = 60
TOKEN_LIFETIME = 3600  # Google's access tokens last an hour
OAUTH_PATH = "/token"
MAX_PAYLOAD_BYTES = 4096
MAX_TTL_SECONDS = 28 * 24 * 3600
REGISTRATION_TOKEN = re.compile(r"^[A-Za-z0-9_:\-]{32,1024}$")
DURATION = re.compile(r"^\d{1,12}(\.\d{1,9})?s$")
RESERVED_DATA_KEYS = frozenset({"from", "notification", "message_type"})
MESSAGE_FIELDS = frozenset(
    {
        "name",
        "data",
        "notification",
        "android",
        "webpush",
        "apns",
        "fcm_options",
        "token",
        "topic",
        "condition",
    }
)
ANDROID_FIELDS = frozenset(
    {
        "collapse_key",
        "priority",
        "ttl",
        "restricted_package_name",
        "data",
        "notification",
        "fcm_options",
        "direct_boot_ok",
    }
)
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
# errorCode -> (HTTP status, canonical status, message), as FCM answers them.
ERRORS: dict[str, tuple[int, str, str]] = {
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "QUOTA_EXCEEDED": (
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute'.",
    ),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
}
UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential."
)
BAD_REGISTRATION = "The registration token is not a valid FCM registration token"


@dataclass(frozen=True, slots=True)
class FcmAnswer:
    """A scripted answer: `error` is an FCM errorCode (ERRORS) or "UNAUTHENTICATED" (a
    401 as for an expired access token); None is success."""

    error: str | None = None
    retry_after: float | None = None
    # For INVALID_ARGUMENT: the field it is about (message.token condemns the device).
    field: str = "message.token"
    delay: float = 0.0  # seconds before answering

    def __post_init__(self) -> None:
        if self.error is not None and self.error not in (*ERRORS, "UNAUTHENTICATED"):
            raise ValueError(f"unknown FCM error {self.error!r}")


@dataclass(frozen=True, slots=True)
class FcmReceived:
    """A message that passed every check, and what it was answered."""

    project: str
    token: str
    message: dict[str, Any]  # the v1 `message` object as sent
    headers: dict[str, str]  # lower-case names
    access_token: str
    status: int
    error: str | None
    received_at: float


@dataclass(frozen=True, slots=True)
class FcmRefusal:
    status: int
    error: str  # the FCM errorCode, else the canonical status
    message: str
    path: str
    received_at: float


@dataclass(frozen=True, slots=True)
class FcmGrant:
    """An access token issued for a valid assertion."""

    access_token: str
    claims: dict[str, Any]
    jwt_header: dict[str, Any]
    expires_in: int
    received_at: float


@dataclass(frozen=True, slots=True)
class FcmGrantRefusal:
    status: int
    error: str  # OAuth 2.0 error: invalid_grant, invalid_scope, ...
    description: str
    received_at: float


class _Refuse(Exception):
    """Refuse the request with this answer (control flow only)."""

    def __init__(
        self, status: int, error: str, message: str, body: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message
        self.body = body or {}


def _fcm_error(
    error: str, message: str | None = None, field: str | None = None
) -> tuple[int, dict[str, Any]]:
    """(status, body) in FCM v1's error shape."""
    if error == "UNAUTHENTICATED":
        return 401, {"error": {"code": 401, "message": UNAUTHENTICATED, "status": error}}
    status, canonical, default = ERRORS[error]
    details: list[dict[str, Any]] = [{"@type": FCM_ERROR_TYPE, "errorCode": error}]
    if field is not None:
        violation = {"field": field, "description": message or default}
        details.append({"@type": BAD_REQUEST_TYPE, "fieldViolations": [violation]})
    body = {
        "error": {
            "code": status,
            "message": message or default,
            "status": canonical,
            "details": details,
        }
    }
    return status, body


def _denied(project: str) -> _Refuse:
    """Another project than the service account's: not ours to send through."""
    message = (
        "Permission 'cloudmessaging.messages.create' denied on resource "
        f"'//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist)."
    )
    body = {"error": {"code": 403, "message": message, "status": "PERMISSION_DENIED"}}
    return _Refuse(403, "PERMISSION_DENIED", message, body)


def _invalid(field: str, message: str) -> _Refuse:
    status, body = _fcm_error("INVALID_ARGUMENT", message, field)
    return _Refuse(status, "INVALID_ARGUMENT", message, body)


def registration_token() -> str:
    """A new registration token shaped like the ones Firebase gives an app instance."""
    alphabet = string.ascii_letters + string.digits + "-_"
    instance = "".join(secrets.choice(alphabet) for _ in range(22))
    return f"{instance}:APA91b" + "".join(secrets.choice(alphabet) for _ in range(134))


class FcmStandin(HttpsSite):
    def __init__(
        self,
        tls: LocalCA,
        *,
        project_id: str = "feed-standin",
        host: str = "127.0.0.1",
        port: int = 0,
        token_lifetime: int = TOKEN_LIFETIME,
    ) -> None:
        super().__init__(tls, host, port)
        self.project_id = project_id
        self.client_email = f"firebase-adminsdk-standin@{project_id}.iam.gserviceaccount.com"
        self.key_id = secrets.token_hex(20)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.token_lifetime = token_lifetime
        self.received: Inbox[FcmReceived] = Inbox()
        self.refused: Inbox[FcmRefusal] = Inbox()
        self.grants: Inbox[FcmGrant] = Inbox()
        self.grant_refusals: Inbox[FcmGrantRefusal] = Inbox()
        self._tokens: dict[str, float] = {}  # access token -> expires at
        self._scripts: dict[str, collections.deque[FcmAnswer]] = {}
        self._unregistered: set[str] = set()

    @property
    def private_key_pem(self) -> str:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def credentials(self) -> dict[str, Any]:
        """The service-account key, as the Firebase console's JSON file (after start())."""
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.key_id,
            "private_key": self.private_key_pem,
            "client_email": self.client_email,
            "client_id": str(secrets.randbelow(10**21)).zfill(21),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.url + OAUTH_PATH,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
            + self.client_email,
            "universe_domain": "googleapis.com",
        }

    def write_credentials(self, path: Path) -> Path:
        """Write the key file (what FCM_CREDENTIALS_FILE points at)."""
        path.write_text(json.dumps(self.credentials(), indent=2))
        path.chmod(0o600)
        return path

    def make_assertion(self, key: rsa.RSAPrivateKey | None = None, **claims: Any) -> str:
        """A jwt-bearer assertion signed with the issued key (or `key`); `claims` override
        the valid ones (tests forge stale, foreign or mis-addressed assertions)."""
        now = int(time.time())
        body = {
            "iss": self.client_email,
            "aud": GOOGLE_OAUTH_AUDIENCE,
            "scope": "https://www.googleapis.com/auth/firebase.messaging",
            "iat": now,
            "exp": now + 3600,
        } | claims
        return jwt.encode(body, key or self._key, algorithm="RS256", headers={"kid": self.key_id})

    def script(self, token: str, *answers: FcmAnswer) -> None:
        """Answers for the registration token, given in order before falling back to 200."""
        self._scripts.setdefault(token, collections.deque()).extend(answers)

    def unregister(self, token: str) -> None:
        """The app was uninstalled: every later message to the token gets UNREGISTERED."""
        self._unregistered.add(token)

    def expire_tokens(self) -> None:
        """Every access token issued so far stops working (as an hour passing would)."""
        self._tokens = dict.fromkeys(self._tokens, 0.0)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(OAUTH_PATH, self._token)
        router.add_post("/v1/projects/{project}/messages:send", self._send)

    # ------------------------------------------------------------------ token endpoint

    async def _token(self, request: web.Request) -> web.Response:
        now = time.time()
        try:
            header, claims = self._check_assertion(await _grant_assertion(request), now)
        except _Refuse as refusal:
            self.grant_refusals.add(
                FcmGrantRefusal(refusal.status, refusal.error, refusal.message, now)
            )
            body = {"error": refusal.error, "error_description": refusal.message}
            return web.json_response(body, status=refusal.status)
        access_token = "ya29.standin-" + secrets.token_urlsafe(48)
        self._tokens[access_token] = now + self.token_lifetime
        self.grants.add(FcmGrant(access_token, claims, header, self.token_lifetime, now))
        return web.json_response(
            {
                "access_token": access_token,
                "expires_in": self.token_lifetime,
                "token_type": "Bearer",
            },
            headers={"Cache-Control": "no-cache, no-store, max-age=0, must-revalidate"},
        )

    def _check_assertion(self, assertion: str, now: float) -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(
                assertion,
                self._key.public_key(),
                algorithms=["RS256"],
                options={
                    "verify_aud": False,
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": ["iss", "aud", "iat", "exp"],
                },
            )
        except jwt.PyJWTError:
            raise _Refuse(400, "invalid_grant", "Invalid JWT Signature.") from None
        if header.get("kid") not in (None, self.key_id):
            raise _Refuse(400, "invalid_grant", "Invalid JWT Signature.")
        if claims.get("iss") != self.client_email:
            raise _Refuse(400, "invalid_grant", "Invalid grant: account not found")
        if claims.get("aud") != GOOGLE_OAUTH_AUDIENCE:
            raise _Refuse(
                400,
                "invalid_grant",
                f"Invalid JWT: Failed audience check. The right audience is "
                f"{GOOGLE_OAUTH_AUDIENCE}",
            )
        iat, exp = claims.get("iat"), claims.get("exp")
        if (
            not isinstance(iat, int)
            or not isinstance(exp, int)
            or iat > now + CLOCK_SKEW
            or exp <= now
            or exp - iat > MAX_ASSERTION_LIFETIME
        ):
            raise _Refuse(
                400,
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim.",
            )
        scope = claims.get("scope")
        if not isinstance(scope, str) or not SCOPES & set(scope.split()):
            raise _Refuse(400, "invalid_scope", "Invalid OAuth scope or ID token audience.")
        return header, claims

    # ------------------------------------------------------------------ messages:send

    async def _send(self, request: web.Request) -> web.Response:
        now = time.time()
        try:
            access_token, message = await self._check_send(request, now)
        except _Refuse as refusal:
            self.refused.add(
                FcmRefusal(refusal.status, refusal.error, refusal.message, request.path, now)
            )
            headers = {}
            if refusal.status == 401:
                headers["WWW-Authenticate"] = 'Bearer realm="https://accounts.google.com/"'
            return web.json_response(refusal.body, status=refusal.status, headers=headers)
        token, project = message["token"], self.project_id
        queue = self._scripts.get(token)
        answer = queue.popleft() if queue else FcmAnswer()
        headers = {k.lower(): v for k, v in request.headers.items()}
        status, body = 200, {"name": f"projects/{project}/messages/0:{secrets.token_hex(8)}"}
        if answer.error is not None:
            field = answer.field if answer.error == "INVALID_ARGUMENT" else None
            text = BAD_REGISTRATION if field == "message.token" else None
            status, body = _fcm_error(answer.error, text, field)
        self.received.add(
            FcmReceived(project, token, message, headers, access_token, status, answer.error, now)
        )
        if answer.delay > 0:
            await asyncio.sleep(answer.delay)
        reply_headers = {}
        if answer.retry_after is not None:
            reply_headers["Retry-After"] = str(int(answer.retry_after))
        return web.json_response(body, status=status, headers=reply_headers)

    async def _check_send(self, request: web.Request, now: float) -> tuple[str, dict[str, Any]]:
        """(access token, message), checked in FCM's order: credentials, project, body,
        then whether the app instance still exists."""
        access_token = self._check_bearer(request.headers.get("Authorization"), now)
        project = request.match_info["project"]
        if project != self.project_id:
            raise _denied(project)
        message = _check_body(await request.read(), request.content_type)
        if message["token"] in self._unregistered:
            status, body = _fcm_error("UNREGISTERED")
            raise _Refuse(status, "UNREGISTERED", "Requested entity was not found.", body)
        return access_token, message

    def _check_bearer(self, authorization: str | None, now: float) -> str:
        scheme, _, token = (authorization or "").partition(" ")
        expires = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if expires is None or expires <= now:
            status, body = _fcm_error("UNAUTHENTICATED")
            raise _Refuse(status, "UNAUTHENTICATED", UNAUTHENTICATED, body)
        return token.strip()


async def _grant_assertion(request: web.Request) -> str:
    """The assertion of a jwt-bearer grant request (RFC 7523 2.1)."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise _Refuse(400, "invalid_request", "Bad Request")
    form = await request.post()
    grant_type, assertion = form.get("grant_type"), form.get("assertion")
    if grant_type != JWT_BEARER:
        shown = grant_type if isinstance(grant_type, str) else ""
        raise _Refuse(400, "unsupported_grant_type", f"Invalid grant_type: {shown}")
    if not isinstance(assertion, str) or not assertion:
        raise _Refuse(400, "invalid_request", "Missing required parameter: assertion")
    return assertion


def _check_body(raw: bytes, content_type: str) -> dict[str, Any]:
    """The v1 request's `message`, checked as FCM checks it."""
    if content_type != "application/json":
        raise _invalid("", "Invalid JSON payload received. Content-Type must be JSON.")
    try:
        body = json.loads(raw)
    except ValueError:
        raise _invalid("", "Invalid JSON payload received.") from None
    if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
        raise _invalid("message", "Invalid JSON payload received: no message.")
    _known(body, {"message", "validate_only"}, "")
    message: dict[str, Any] = body["message"]
    _known(message, MESSAGE_FIELDS, "message")
    targets = [name for name in ("token", "topic", "condition") if name in message]
    if targets != ["token"]:
        raise _invalid("message", "Exactly one of token, topic or condition is required.")
    data = message.get("data", {})
    _string_map(data, "message.data")
    if any(k in RESERVED_DATA_KEYS or k.startswith(("google", "gcm")) for k in data):
        raise _invalid("message.data", "Invalid data payload key.")
    notification = message.get("notification", {})
    if not isinstance(notification, dict):
        raise _invalid("message.notification", "Invalid value.")
    _known(notification, {"title", "body", "image"}, "message.notification")
    _string_map(notification, "message.notification")
    _check_android(message.get("android", {}))
    size = sum(len(k.encode()) + len(v.encode()) for k, v in data.items())
    size += sum(len(v.encode()) for v in notification.values())
    if size > MAX_PAYLOAD_BYTES:
        raise _invalid("message", "Message is too big.")
    if not isinstance(message["token"], str) or not REGISTRATION_TOKEN.fullmatch(message["token"]):
        raise _invalid("message.token", BAD_REGISTRATION)
    return message


def _check_android(android: Any) -> None:
    if not isinstance(android, dict):
        raise _invalid("message.android", "Invalid value.")
    _known(android, ANDROID_FIELDS, "message.android")
    if android.get("priority", "NORMAL") not in ("NORMAL", "HIGH"):
        raise _invalid("message.android.priority", "Invalid value at 'message.android.priority'.")
    ttl = android.get("ttl", "0s")
    if not isinstance(ttl, str) or not DURATION.fullmatch(ttl):
        raise _invalid("message.android.ttl", "Invalid value at 'message.android.ttl'.")
    if float(ttl[:-1]) > MAX_TTL_SECONDS:
        raise _invalid("message.android.ttl", "TTL must be at most 4 weeks.")
    collapse_key = android.get("collapse_key", "")
    if not isinstance(collapse_key, str):
        raise _invalid("message.android.collapse_key", "Invalid value.")
    if "data" in android:
        _string_map(android["data"], "message.android.data")


def _known(obj: dict[str, Any], fields: frozenset[str] | set[str], where: str) -> None:
    for name in obj:
        if name not in fields:
            at = f" at '{where}'" if where else ""
            text = f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.'
            raise _invalid(where, text)


def _string_map(value: Any, where: str) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _invalid(where, f"Invalid value at '{where}': values must be strings.")
