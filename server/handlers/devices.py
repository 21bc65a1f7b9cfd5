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
from server.context import ctx, user_id
from server.contract.devices import NewDevice, Subscription, WebPushDevice
from server.domain import devices
from server.feed.hydrate import iso
from server.http import validation as v
from server.http.errors import invalid
from server.http.service_json import json

RESOLVE_TIMEOUT = 3.0


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
    row = await devices.register(c, me, kind, token, p256dh, auth)
    return json({"device": device_json(row)}, status=201)


async def list_devices(request: web.Request) -> web.Response:
    rows = await devices.mine(ctx(request), user_id(request))
    return json({"devices": [device_json(r) for r in rows]})


async def delete_device(request: web.Request) -> web.Response:
    await devices.delete(ctx(request), user_id(request), v.path_id(request))
    return web.Response(status=204)


async def vapid_public_key(request: web.Request) -> web.Response:
    return json({"public_key": ctx(request).vapid_public_key})
