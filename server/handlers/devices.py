"""Push devices: register an APNs token, an FCM registration token or a Web Push
subscription, list and delete mine, and the VAPID public key browsers subscribe with.

A Web Push endpoint is a URL the user chose that our push workers will POST to: it is
checked here (https, public addresses only) so that the API never stores an address
inside our network; the push worker checks the resolved address again when it sends.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from aiohttp import web

from core.endpoints import EndpointRejected, check_webpush_endpoint, resolve_public
from server import validation as v
from server.context import ctx, user_id
from server.errors import ApiError, invalid
from server.hydrate import iso
from server.service_json import json

MAX_DEVICES = 20  # per user: phones, tablets and browsers; more is a client bug
APNS_TOKEN = re.compile(r"^[0-9A-Fa-f]{64,200}$")
# As push/providers/fcm.py checks it again before sending: opaque, ~150-200 characters now.
FCM_TOKEN = re.compile(r"^[A-Za-z0-9_:\-]{32,1024}$")
P256_POINT_BYTES = 65  # uncompressed: 0x04 || X || Y
AUTH_SECRET_BYTES = 16
RESOLVE_TIMEOUT = 3.0

DEVICE_COLUMNS = "id, kind, token, enabled, disabled_reason, created_at"


def device_json(row: asyncpg.Record) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(row["id"]),
        "kind": row["kind"],
        "enabled": row["enabled"],
        "disabled_reason": row["disabled_reason"],
        "created_at": iso(row["created_at"]),
    }
    # The endpoint is the user's own URL; an APNs or FCM token is only shown abbreviated
    # (it identifies the device to Apple or Google, the client already has it).
    if row["kind"] == "webpush":
        body["endpoint"] = row["token"]
    else:
        body["token_suffix"] = row["token"][-8:]
    return body


def _base64url(value: Any, field: str, size: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise invalid(field, f"{field} must be a base64url string")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise invalid(field, f"{field} is not base64url") from None
    if len(raw) != size:
        raise invalid(field, f"{field} must decode to {size} bytes")
    return value.rstrip("=")


async def _webpush(
    request: web.Request, body: dict[str, Any]
) -> tuple[str, str | None, str | None]:
    subscription = body.get("subscription")
    if subscription is None:
        raise invalid("subscription", "subscription is required", "missing_field")
    if not isinstance(subscription, dict):
        raise invalid("subscription", "subscription must be an object")
    v.refuse_unknown(subscription, {"endpoint", "keys", "expirationTime"})
    endpoint = v.string(subscription, "endpoint")
    keys = subscription.get("keys")
    if not isinstance(keys, dict):
        raise invalid("keys", "subscription.keys must be an object with p256dh and auth")
    p256dh = _base64url(keys.get("p256dh"), "p256dh", P256_POINT_BYTES)
    if base64.urlsafe_b64decode(p256dh + "=" * (-len(p256dh) % 4))[0] != 4:
        raise invalid("p256dh", "p256dh must be an uncompressed P-256 point")
    auth = _base64url(keys.get("auth"), "auth", AUTH_SECRET_BYTES)
    settings = ctx(request).settings
    assert endpoint is not None
    try:
        url = check_webpush_endpoint(endpoint, settings.push_allow_loopback)
        parts = urlsplit(url)
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            await resolve_public(
                parts.hostname or "", parts.port or 443, settings.push_allow_loopback
            )
    except EndpointRejected as exc:
        raise invalid("endpoint", str(exc), "endpoint_refused") from None
    except TimeoutError:
        raise invalid(
            "endpoint", "the endpoint's host did not resolve in time", "endpoint_refused"
        ) from None
    return url, p256dh, auth


def _apns(body: dict[str, Any]) -> str:
    token = v.string(body, "token")
    assert token is not None
    if not APNS_TOKEN.fullmatch(token):
        raise invalid("token", "an APNs device token is 64 or more hexadecimal digits")
    return token.lower()


def _fcm(body: dict[str, Any]) -> str:
    token = v.string(body, "token")
    assert token is not None
    if not FCM_TOKEN.fullmatch(token):
        raise invalid("token", "an FCM registration token is 32-1024 of A-Z a-z 0-9 _ : -")
    return token  # opaque and case-sensitive: stored exactly as given


async def register(request: web.Request) -> web.Response:
    c, me = ctx(request), user_id(request)
    body = await v.read_json(request)
    kind = v.string(body, "kind")
    if kind == "apns":
        v.refuse_unknown(body, {"kind", "token"})
        token, p256dh, auth = _apns(body), None, None
    elif kind == "fcm":
        v.refuse_unknown(body, {"kind", "token"})
        token, p256dh, auth = _fcm(body), None, None
    elif kind == "webpush":
        v.refuse_unknown(body, {"kind", "subscription"})
        token, p256dh, auth = await _webpush(request, body)
    else:
        raise invalid("kind", "kind must be apns, fcm or webpush")
    async with c.db.acquire() as conn, conn.transaction():
        # Serialise one user's registrations so the cap cannot be raced past.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('devices:' || $1::bigint::text, 0))", me
        )
        others = await conn.fetchval(
            "SELECT count(*) FROM devices WHERE user_id = $1 AND enabled"
            " AND NOT (kind = $2 AND token = $3)",
            me,
            kind,
            token,
        )
        if others >= MAX_DEVICES:
            raise ApiError(
                409, "too_many_devices", f"at most {MAX_DEVICES} devices; delete one first"
            )
        # A token registered again moves to its new owner (a phone changed hands, a
        # browser profile signed in as someone else) and is enabled again.
        row = await conn.fetchrow(
            "INSERT INTO devices (id, user_id, kind, token, p256dh, auth)"
            " VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (kind, token) DO UPDATE SET user_id = EXCLUDED.user_id,"
            "  p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth, enabled = true,"
            "  disabled_reason = NULL, disabled_at = NULL, updated_at = now()"
            f" RETURNING {DEVICE_COLUMNS}",
            c.ids.next_id(),
            me,
            kind,
            token,
            p256dh,
            auth,
        )
    assert row is not None  # INSERT ... ON CONFLICT DO UPDATE always returns the row
    return json({"device": device_json(row)}, status=201)


async def list_devices(request: web.Request) -> web.Response:
    c, me = ctx(request), user_id(request)
    rows = await c.db.fetch(
        f"SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1 ORDER BY id DESC LIMIT $2",
        me,
        MAX_DEVICES * 5,
    )
    return json({"devices": [device_json(r) for r in rows]})


async def delete_device(request: web.Request) -> web.Response:
    c, me = ctx(request), user_id(request)
    device = v.path_id(request)
    deleted = await c.db.fetchval(
        "DELETE FROM devices WHERE id = $1 AND user_id = $2 RETURNING id", device, me
    )
    if deleted is None:  # someone else's device looks exactly like a missing one
        raise ApiError(404, "device_not_found", "no such device")
    return web.Response(status=204)


async def vapid_public_key(request: web.Request) -> web.Response:
    return json({"public_key": ctx(request).vapid_public_key})
