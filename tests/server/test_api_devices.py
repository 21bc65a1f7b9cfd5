"""Push devices through the API: registration of APNs tokens, FCM registration tokens and
Web Push subscriptions, ownership, the VAPID key, and the SSRF rules for endpoints chosen
by users."""

from __future__ import annotations

import base64
import dataclasses
import os
import uuid
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from core.settings import Settings
from server.domain.devices import MAX_DEVICES
from standins.fcm import registration_token
from tests.support.api import MakeClient, error_of, sign_up
from tests.support.api_server import serve_api

Client = TestClient[web.Request, web.Application]
PUBLIC_ENDPOINT = "https://93.184.216.34/push/v2/"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def subscription(endpoint: str | None = None) -> dict[str, Any]:
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return {
        "endpoint": endpoint or PUBLIC_ENDPOINT + uuid.uuid4().hex,
        "keys": {"p256dh": b64url(point), "auth": b64url(os.urandom(16))},
    }


def apns_token() -> str:
    return os.urandom(32).hex()


async def test_register_list_and_delete_devices(api: Client) -> None:
    me = await sign_up(api)
    token = apns_token()
    resp = await api.post("/v1/devices", json={"kind": "apns", "token": token}, headers=me.auth)
    assert resp.status == 201, await resp.text()
    apns = (await resp.json())["device"]
    assert apns["kind"] == "apns" and apns["enabled"] and apns["token_suffix"] == token[-8:]
    sub = subscription()
    resp = await api.post(
        "/v1/devices", json={"kind": "webpush", "subscription": sub}, headers=me.auth
    )
    assert resp.status == 201, await resp.text()
    web_device = (await resp.json())["device"]
    assert web_device["endpoint"] == sub["endpoint"]

    listed = await (await api.get("/v1/devices", headers=me.auth)).json()
    assert [d["id"] for d in listed["devices"]] == [web_device["id"], apns["id"]]

    resp = await api.delete(f"/v1/devices/{apns['id']}", headers=me.auth)
    assert resp.status == 204
    resp = await api.delete(f"/v1/devices/{apns['id']}", headers=me.auth)
    assert (resp.status, (await error_of(resp))["code"]) == (404, "device_not_found")
    listed = await (await api.get("/v1/devices", headers=me.auth)).json()
    assert [d["id"] for d in listed["devices"]] == [web_device["id"]]


async def test_a_token_registered_again_moves_to_its_new_owner(api: Client) -> None:
    first, second = await sign_up(api), await sign_up(api)
    token = apns_token()
    body = {"kind": "apns", "token": token.upper()}  # hex is case-insensitive
    one = await (await api.post("/v1/devices", json=body, headers=first.auth)).json()
    resp = await api.post("/v1/devices", json={"kind": "apns", "token": token}, headers=second.auth)
    assert resp.status == 201
    two = (await resp.json())["device"]
    assert two["id"] == one["device"]["id"]  # the same device, not a copy
    assert (await (await api.get("/v1/devices", headers=first.auth)).json())["devices"] == []
    mine = (await (await api.get("/v1/devices", headers=second.auth)).json())["devices"]
    assert [d["id"] for d in mine] == [two["id"]]


async def test_android_devices_are_registered_moved_listed_and_deleted(api: Client) -> None:
    first, second = await sign_up(api), await sign_up(api)
    token = registration_token()
    resp = await api.post("/v1/devices", json={"kind": "fcm", "token": token}, headers=first.auth)
    assert resp.status == 201, await resp.text()
    phone = (await resp.json())["device"]
    assert phone["kind"] == "fcm" and phone["enabled"] and phone["token_suffix"] == token[-8:]
    # Registration tokens are case-sensitive: another case is another device.
    other = {"kind": "fcm", "token": token.swapcase()}
    resp = await api.post("/v1/devices", json=other, headers=first.auth)
    assert (await resp.json())["device"]["id"] != phone["id"]

    resp = await api.post("/v1/devices", json={"kind": "fcm", "token": token}, headers=second.auth)
    assert resp.status == 201
    assert (await resp.json())["device"]["id"] == phone["id"]  # moved, not copied
    mine = (await (await api.get("/v1/devices", headers=second.auth)).json())["devices"]
    assert [(d["id"], d["kind"]) for d in mine] == [(phone["id"], "fcm")]
    theirs = (await (await api.get("/v1/devices", headers=first.auth)).json())["devices"]
    assert phone["id"] not in [d["id"] for d in theirs]

    assert (await api.delete(f"/v1/devices/{phone['id']}", headers=second.auth)).status == 204
    assert (await (await api.get("/v1/devices", headers=second.auth)).json())["devices"] == []


async def test_nobody_deletes_someone_elses_device(api: Client) -> None:
    owner, other = await sign_up(api), await sign_up(api)
    resp = await api.post(
        "/v1/devices", json={"kind": "apns", "token": apns_token()}, headers=owner.auth
    )
    device = (await resp.json())["device"]
    resp = await api.delete(f"/v1/devices/{device['id']}", headers=other.auth)
    assert (resp.status, (await error_of(resp))["code"]) == (404, "device_not_found")
    assert len((await (await api.get("/v1/devices", headers=owner.auth)).json())["devices"]) == 1
    resp = await api.delete("/v1/devices/not-an-id", headers=owner.auth)
    assert resp.status == 404


async def test_devices_need_a_valid_token(api: Client) -> None:
    for headers in ({}, {"Authorization": "Bearer forged.token.value"}):
        for method, path in (("GET", "/v1/devices"), ("POST", "/v1/devices")):
            resp = await api.request(method, path, headers=headers, json={"kind": "apns"})
            assert resp.status == 401
        resp = await api.delete("/v1/devices/1", headers=headers)
        assert resp.status == 401


async def test_the_vapid_key_is_public_a_p256_point_and_stable(
    api: Client, settings: Settings, aiohttp_client: MakeClient
) -> None:
    me = await sign_up(api)
    key = (await (await api.get("/v1/push/vapid-public-key")).json())["public_key"]
    raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    assert len(raw) == 65 and raw[0] == 4
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)  # a valid point
    other_server = await aiohttp_client(serve_api(settings))
    again = await (await other_server.get("/v1/push/vapid-public-key", headers=me.auth)).json()
    assert again["public_key"] == key


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"kind": "gcm", "token": "x" * 64}, "kind", "invalid_field"),
        ({"kind": "fcm", "token": "x"}, "token", "invalid_field"),
        ({"kind": "fcm"}, "token", "missing_field"),
        ({"kind": "fcm", "token": "a" * 64 + " b"}, "token", "invalid_field"),
        ({"kind": "fcm", "token": "a" * 1025}, "token", "invalid_field"),
        ({"kind": "fcm", "token": "a" * 64, "keys": {}}, "keys", "unknown_field"),
        ({"token": "ab" * 32}, "kind", "missing_field"),
        ({"kind": "apns"}, "token", "missing_field"),
        ({"kind": "apns", "token": 12345}, "token", "invalid_field"),
        ({"kind": "apns", "token": "zz" * 32}, "token", "invalid_field"),
        ({"kind": "apns", "token": "ab" * 10}, "token", "invalid_field"),
        ({"kind": "apns", "token": "ab" * 32 + "\x00"}, "token", "invalid_field"),
        ({"kind": "apns", "token": "ab" * 32, "extra": 1}, "extra", "unknown_field"),
        ({"kind": "webpush"}, "subscription", "missing_field"),
        ({"kind": "webpush", "subscription": "https://x"}, "subscription", "invalid_field"),
        (
            {"kind": "webpush", "subscription": {"endpoint": PUBLIC_ENDPOINT}},
            "keys",
            "invalid_field",
        ),
    ],
)
async def test_malformed_registrations_are_refused(
    api: Client, body: dict[str, Any], field: str, code: str
) -> None:
    me = await sign_up(api)
    resp = await api.post("/v1/devices", json=body, headers=me.auth)
    assert resp.status == 422, await resp.text()
    error = await error_of(resp)
    assert (error["code"], error.get("field")) == (code, field)


@pytest.mark.parametrize(
    ("keys", "field"),
    [
        ({"p256dh": "not base64!", "auth": b64url(os.urandom(16))}, "p256dh"),
        ({"p256dh": b64url(os.urandom(33)), "auth": b64url(os.urandom(16))}, "p256dh"),
        ({"p256dh": b64url(b"\x02" + os.urandom(64)), "auth": b64url(os.urandom(16))}, "p256dh"),
        ({"p256dh": subscription()["keys"]["p256dh"], "auth": b64url(os.urandom(8))}, "auth"),
        ({"p256dh": subscription()["keys"]["p256dh"], "auth": 16}, "auth"),
    ],
)
async def test_broken_subscription_keys_are_refused(
    api: Client, keys: dict[str, Any], field: str
) -> None:
    me = await sign_up(api)
    sub = {"endpoint": PUBLIC_ENDPOINT + "k", "keys": keys}
    resp = await api.post(
        "/v1/devices", json={"kind": "webpush", "subscription": sub}, headers=me.auth
    )
    assert resp.status == 422
    assert (await error_of(resp))["field"] == field


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://push.example.com/x",  # not https
        "file:///etc/passwd",
        "gopher://93.184.216.34/x",
        "https://10.0.0.1/x",  # private
        "https://192.168.1.10/x",
        "https://127.0.0.1:8443/x",  # loopback (not allowed by default)
        "https://[::1]/x",
        "https://localhost/x",
        "https://169.254.169.254/latest/meta-data/",  # cloud metadata service
        "https://[::ffff:169.254.169.254]/x",
        "https://[fd00::1]/x",
        "https://0.0.0.0/x",
        "https://user:pass@93.184.216.34/x",
        "https:///nohost",
        "https://93.184.216.34/" + "a" * 3000,
    ],
)
async def test_hostile_endpoints_are_refused_at_registration(api: Client, endpoint: str) -> None:
    me = await sign_up(api)
    body = {"kind": "webpush", "subscription": subscription(endpoint)}
    resp = await api.post("/v1/devices", json=body, headers=me.auth)
    assert resp.status == 422, await resp.text()
    error = await error_of(resp)
    assert error["field"] == "endpoint"
    assert error["code"] in ("endpoint_refused", "invalid_field")
    assert (await (await api.get("/v1/devices", headers=me.auth)).json())["devices"] == []


async def test_loopback_endpoints_only_when_the_setting_allows_them(
    settings: Settings, aiohttp_client: MakeClient
) -> None:
    relaxed = await aiohttp_client(
        serve_api(dataclasses.replace(settings, push_allow_loopback=True))
    )
    me = await sign_up(relaxed)
    body = {"kind": "webpush", "subscription": subscription("https://127.0.0.1:9/push/x")}
    resp = await relaxed.post("/v1/devices", json=body, headers=me.auth)
    assert resp.status == 201, await resp.text()
    body = {"kind": "webpush", "subscription": subscription("https://169.254.169.254/x")}
    resp = await relaxed.post("/v1/devices", json=body, headers=me.auth)
    assert resp.status == 422  # loopback is allowed; the metadata service never is


async def test_devices_per_user_are_capped(api: Client) -> None:
    me = await sign_up(api)
    for i in range(MAX_DEVICES):
        body = (
            {"kind": "apns", "token": apns_token()}
            if i % 2
            else {"kind": "fcm", "token": registration_token()}
        )
        resp = await api.post("/v1/devices", json=body, headers=me.auth)
        assert resp.status == 201
    for body in (
        {"kind": "apns", "token": apns_token()},
        {"kind": "fcm", "token": registration_token()},
    ):
        resp = await api.post("/v1/devices", json=body, headers=me.auth)
        assert (resp.status, (await error_of(resp))["code"]) == (409, "too_many_devices")
