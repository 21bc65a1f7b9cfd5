"""Push devices: register an APNs token, an FCM registration token or a Web Push
subscription, list and delete mine, and the VAPID public key browsers subscribe with.

A Web Push endpoint is a URL the user chose that our push workers will POST to: it is
checked here (https, public addresses only) so that the API never stores an address
inside our network; the push worker checks the resolved address again when it sends.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from aiohttp import web

from core.endpoints import EndpointRejected, check_webpush_endpoint, resolve_public
from server import validation as v
from server.context import ctx, user_id
from server.contract.devices import NewDevice, Subscription, WebPushDevice
from server.errors import ApiError, invalid
from server.hydrate import iso
from server.service_json import json

MAX_DEVICES = 20  # per user: phones, tablets and browsers; more is a client bug
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


async def _webpush(request: web.Request, subscription: Subscription) -> str:
    """The endpoint, once it is https on public addresses (resolved here, with a bound)."""
    settings = ctx(request).settings
    try:
        url = check_webpush_endpoint(subscription.endpoint, settings.push_allow_loopback)
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
    return url


async def register(request: web.Request) -> web.Response:
    c, me = ctx(request), user_id(request)
    device = (await v.read_body(request, NewDevice)).root
    kind = device.kind
    p256dh: str | None = None
    auth: str | None = None
    if isinstance(device, WebPushDevice):
        token = await _webpush(request, device.subscription)
        p256dh, auth = device.subscription.keys.p256dh, device.subscription.keys.auth
    else:  # an APNs token (lower-cased by its model) or an FCM token (as given)
        token = device.token
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
