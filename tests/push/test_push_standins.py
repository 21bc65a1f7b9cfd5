"""The push adapters (real aioapns, real pywebpush) against stand-ins that speak APNs'
and Web Push's real protocols, and the SSRF rules for Web Push endpoints. No stack."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02
from pywebpush import WebPusher

from core import vapid
from core.endpoints import (
    EndpointRejected,
    check_webpush_endpoint,
    is_public_address,
    resolve_public,
)
from core.settings import SettingsError
from push.providers import Outcome, parse_retry_after
from push.providers.apns import ApnsPush, ApnsSender
from push.providers.webpush import WebPushMessage, WebPushSender
from standins.apns import ApnsAnswer, ApnsStandin
from standins.tls import LocalCA
from standins.webpush import WebPushAnswer, WebPushStandin
from tests.support import standins as support
from tests.support.standins import h2_post, push_settings, silent_server

# The stand-in fixtures, bound here so pytest finds them in this module.
standin_ca = support.standin_ca
apns_standin = support.apns_standin
webpush_standin = support.webpush_standin

TOKEN = "a1" * 32
ALERT = {"aps": {"alert": {"title": "@ann liked your post"}}, "t": "like"}
SILENT = {"aps": {"content-available": 1}, "t": "feed"}


@pytest.fixture
async def apns_sender(standin_ca: LocalCA, apns_standin: ApnsStandin) -> AsyncIterator[ApnsSender]:
    sender = ApnsSender.from_settings(push_settings(standin_ca, apns_standin))
    assert sender is not None
    yield sender
    await sender.close()


@pytest.fixture
def vapid_keys() -> vapid.VapidKeys:
    return vapid.generate()


@pytest.fixture
async def webpush_sender(
    standin_ca: LocalCA, vapid_keys: vapid.VapidKeys
) -> AsyncIterator[WebPushSender]:
    sender = WebPushSender.from_settings(push_settings(standin_ca), vapid_keys.private_pem)
    yield sender
    await sender.close()


def alert(token: str = TOKEN, **changes: Any) -> ApnsPush:
    fields: dict[str, Any] = {
        "token": token,
        "push_type": "alert",
        "payload": ALERT,
        "collapse_id": None,
        "expiration": int(time.time()) + 3600,
    }
    return ApnsPush(**(fields | changes))


def message(subscription: dict[str, Any], data: bytes = b"{}", **changes: Any) -> WebPushMessage:
    fields: dict[str, Any] = {
        "endpoint": subscription["endpoint"],
        "p256dh": subscription["keys"]["p256dh"],
        "auth": subscription["keys"]["auth"],
        "data": data,
        "ttl": 600,
        "urgency": "normal",
        "topic": None,
    }
    return WebPushMessage(**(fields | changes))


# ---------------------------------------------------------------------------- APNs


async def test_alert_push_arrives_with_apple_headers_and_provider_jwt(
    apns_standin: ApnsStandin, apns_sender: ApnsSender
) -> None:
    expiration = int(time.time()) + 86_400
    outcome = await apns_sender.send(alert(collapse_id="likes", expiration=expiration))
    assert outcome == Outcome("apns", "sent", 200, "ok")
    (got,) = await apns_standin.received.wait_for(1)
    assert got.token == TOKEN and got.payload == ALERT
    assert got.headers["apns-push-type"] == "alert"
    assert got.headers["apns-priority"] == "10"
    assert got.headers["apns-topic"] == "com.example.feed"
    assert got.headers["apns-collapse-id"] == "likes"
    assert abs(int(got.headers["apns-expiration"]) - expiration) <= 1
    assert got.jwt_header["alg"] == "ES256" and got.jwt_header["kid"] == apns_standin.key_id
    assert got.claims["iss"] == apns_standin.team_id
    assert abs(got.claims["iat"] - time.time()) < 5


async def test_background_push_is_silent_with_priority_5(
    apns_standin: ApnsStandin, apns_sender: ApnsSender
) -> None:
    push = alert(push_type="background", payload=SILENT, collapse_id="feed")
    assert push.priority == 5
    assert (await apns_sender.send(push)).result == "sent"
    (got,) = await apns_standin.received.wait_for(1)
    assert got.headers["apns-push-type"] == "background"
    assert got.headers["apns-priority"] == "5"
    assert got.headers["apns-collapse-id"] == "feed"
    assert got.payload == SILENT


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (ApnsAnswer(410, "Unregistered"), Outcome("apns", "invalid", 410, "Unregistered")),
        (ApnsAnswer(400, "BadDeviceToken"), Outcome("apns", "invalid", 400, "BadDeviceToken")),
        (
            ApnsAnswer(400, "DeviceTokenNotForTopic"),
            Outcome("apns", "invalid", 400, "DeviceTokenNotForTopic"),
        ),
        (
            ApnsAnswer(429, "TooManyRequests", 30),
            Outcome("apns", "retry", 429, "TooManyRequests", 30.0),
        ),
        (
            ApnsAnswer(500, "InternalServerError"),
            Outcome("apns", "retry", 500, "InternalServerError"),
        ),
        (
            ApnsAnswer(503, "ServiceUnavailable"),
            Outcome("apns", "retry", 503, "ServiceUnavailable"),
        ),
        (ApnsAnswer(413, "PayloadTooLarge"), Outcome("apns", "failed", 413, "PayloadTooLarge")),
        (ApnsAnswer(400, "PayloadTooLarge"), Outcome("apns", "failed", 400, "PayloadTooLarge")),
        (
            ApnsAnswer(403, "ExpiredProviderToken"),
            Outcome("apns", "failed", 403, "ExpiredProviderToken"),
        ),
        (ApnsAnswer(400, "SomethingNew"), Outcome("apns", "failed", 400, "http_400")),
    ],
)
async def test_scripted_apns_answers_map_to_outcomes(
    apns_standin: ApnsStandin, apns_sender: ApnsSender, answer: ApnsAnswer, expected: Outcome
) -> None:
    apns_standin.script(TOKEN, answer)
    assert await apns_sender.send(alert()) == expected
    # The script is used up: the next push to the device goes through.
    assert (await apns_sender.send(alert())).result == "sent"


async def test_adapter_refuses_locally_what_apple_would_refuse(
    apns_standin: ApnsStandin, apns_sender: ApnsSender
) -> None:
    assert await apns_sender.send(alert(token="not-hex")) == Outcome(
        "apns", "invalid", None, "BadDeviceToken"
    )
    big = {"aps": {"alert": "x" * 5000}}
    assert await apns_sender.send(alert(payload=big)) == Outcome(
        "apns", "failed", None, "PayloadTooLarge"
    )
    with pytest.raises(ValueError, match="64 bytes"):
        alert(collapse_id="c" * 65)
    assert apns_standin.received.items == []


def _foreign_token(apns: ApnsStandin) -> str:
    """Right kid and team, signed by a key that is not the one Apple issued."""
    other = ec.generate_private_key(ec.SECP256R1())
    claims = {"iss": apns.team_id, "iat": int(time.time())}
    return jwt.encode(claims, other, algorithm="ES256", headers={"kid": apns.key_id})


def _refusal(case: str, status: int, reason: str, **change: Any) -> Any:
    return pytest.param(change, status, reason, id=case)


REFUSALS = [
    _refusal(
        "stale_jwt",
        403,
        "ExpiredProviderToken",
        token=lambda a: a.make_token(iat=int(time.time()) - 2 * 3600),
    ),
    _refusal(
        "future_jwt",
        403,
        "InvalidProviderToken",
        token=lambda a: a.make_token(iat=int(time.time()) + 600),
    ),
    _refusal("wrong_kid", 403, "InvalidProviderToken", token=lambda a: a.make_token(kid="Z" * 10)),
    _refusal("wrong_team", 403, "InvalidProviderToken", token=lambda a: a.make_token(iss="Z" * 10)),
    _refusal("foreign_key", 403, "InvalidProviderToken", token=_foreign_token),
    _refusal("no_jwt", 403, "MissingProviderToken", token=lambda a: None),
    _refusal("no_topic", 400, "MissingTopic", headers={"apns-topic": ""}),
    _refusal("other_topic", 400, "TopicDisallowed", headers={"apns-topic": "com.example.other"}),
    _refusal(
        "background_priority_10",
        400,
        "BadPriority",
        headers={"apns-push-type": "background"},
        body=SILENT,
    ),
    _refusal(
        "background_with_alert",
        400,
        "InvalidPushType",
        headers={"apns-push-type": "background", "apns-priority": "5"},
    ),
    _refusal("long_collapse_id", 400, "BadCollapseId", headers={"apns-collapse-id": "c" * 65}),
    _refusal("too_large", 413, "PayloadTooLarge", body={"aps": {"alert": "x" * 4100}}),
    _refusal("no_aps", 400, "PayloadEmpty", body={"alert": "hi"}),
    _refusal("bad_device_token", 400, "BadDeviceToken", device="zz" * 32),
]


def _h2_headers(apns: ApnsStandin, token: str | None, **extra: str) -> list[tuple[str, str]]:
    headers = {"apns-topic": apns.topic, "apns-push-type": "alert", "apns-priority": "10"}
    if token is not None:
        headers["authorization"] = f"bearer {token}"
    headers.update(extra)
    return [(name, value) for name, value in headers.items() if value]


@pytest.mark.parametrize(("change", "status", "reason"), REFUSALS)
async def test_apns_standin_refuses_like_apple(
    standin_ca: LocalCA,
    apns_standin: ApnsStandin,
    change: dict[str, Any],
    status: int,
    reason: str,
) -> None:
    token = change.get("token", lambda a: a.make_token())(apns_standin)
    response = await h2_post(
        apns_standin.url,
        f"/3/device/{change.get('device', TOKEN)}",
        _h2_headers(apns_standin, token, **change.get("headers", {})),
        json.dumps(change.get("body", ALERT)).encode(),
        standin_ca.client_context(alpn=["h2"]),
    )
    assert (response.status, json.loads(response.body)["reason"]) == (status, reason)
    assert "apns-id" in response.headers
    (refusal,) = await apns_standin.refused.wait_for(1)
    assert (refusal.status, refusal.reason) == (status, reason)
    assert apns_standin.received.items == []


async def test_unregistered_answer_carries_a_timestamp(
    standin_ca: LocalCA, apns_standin: ApnsStandin
) -> None:
    apns_standin.script(TOKEN, ApnsAnswer(410, "Unregistered"))
    response = await h2_post(
        apns_standin.url,
        f"/3/device/{TOKEN}",
        _h2_headers(apns_standin, apns_standin.make_token()),
        json.dumps(ALERT).encode(),
        standin_ca.client_context(alpn=["h2"]),
    )
    body = json.loads(response.body)
    assert response.status == 410 and body["reason"] == "Unregistered"
    assert abs(body["timestamp"] / 1000 - time.time()) < 5


async def test_provider_token_survives_reconnects(
    apns_standin: ApnsStandin, apns_sender: ApnsSender
) -> None:
    """Apple refuses a new provider token within 20 minutes of the last one; aioapns
    alone would mint one per connection."""
    assert (await apns_sender.send(alert())).result == "sent"
    apns_standin.drop_connections()  # GOAWAY, as Apple does now and then
    await asyncio.sleep(1.1)  # a new token now would carry another iat
    assert (await apns_sender.send(alert())).result == "sent"
    first, second = await apns_standin.received.wait_for(2)
    assert first.claims["iat"] == second.claims["iat"]
    assert first.headers["authorization"] == second.headers["authorization"]


async def test_many_error_answers_do_not_stall_the_connection(
    apns_standin: ApnsStandin, apns_sender: ApnsSender
) -> None:
    """Error bodies count against HTTP/2 flow control; aioapns never gives the window
    back, which stalls a connection after ~64 KiB of them (aioapns PR #75)."""
    count = 1300  # x ~55-byte 410 bodies > the 65 535-byte initial window
    apns_standin.script(TOKEN, *[ApnsAnswer(410, "Unregistered")] * count)
    for start in range(0, count, 200):
        batch = [apns_sender.send(alert()) for _ in range(min(200, count - start))]
        outcomes = await asyncio.gather(*batch)
        assert {o.reason for o in outcomes} == {"Unregistered"}
    assert (await apns_sender.send(alert())).result == "sent"
    assert apns_standin.connection_count == 1


async def test_apns_send_to_a_silent_server_times_out(standin_ca: LocalCA) -> None:
    async with silent_server() as port:
        settings = push_settings(
            standin_ca,
            apns_key=ApnsStandin(standin_ca).key_pem,
            apns_key_id="KEYID12345",
            apns_team_id="TEAM123456",
            apns_url=f"https://127.0.0.1:{port}",
            push_timeout_seconds=0.5,
        )
        sender = ApnsSender.from_settings(settings)
        assert sender is not None
        try:
            started = time.monotonic()
            outcome = await sender.send(alert())
            elapsed = time.monotonic() - started
        finally:
            await sender.close()
    assert outcome == Outcome("apns", "retry", None, "timeout")
    assert 0.4 < elapsed < 1.5


async def test_apns_answer_after_the_timeout_is_dropped_cleanly(
    apns_standin: ApnsStandin, standin_ca: LocalCA
) -> None:
    """A send that times out is abandoned (its stream reset) without disturbing the
    other pushes on the same connection, which stays usable."""
    settings = push_settings(standin_ca, apns_standin, push_timeout_seconds=0.3)
    sender = ApnsSender.from_settings(settings)
    assert sender is not None
    other = "b2" * 32
    apns_standin.script(TOKEN, ApnsAnswer(200, delay=0.6))
    apns_standin.script(other, ApnsAnswer(200, delay=0.2))
    try:
        slow, fast = await asyncio.gather(sender.send(alert()), sender.send(alert(other)))
        assert (slow.reason, fast.result) == ("timeout", "sent")
        await asyncio.sleep(0.5)  # the late answer arrives (for a reset stream)
        assert (await sender.send(alert())).result == "sent"
    finally:
        await sender.close()


async def test_apns_sender_from_settings(
    standin_ca: LocalCA, apns_standin: ApnsStandin, tmp_path: Any
) -> None:
    assert ApnsSender.from_settings(push_settings(standin_ca)) is None
    key_file = apns_standin.write_key(tmp_path / "AuthKey.p8")
    from_file = push_settings(standin_ca, apns_standin, apns_key="", apns_key_file=str(key_file))
    sender = ApnsSender.from_settings(from_file)
    assert sender is not None
    try:
        assert (await sender.send(alert())).result == "sent"
    finally:
        await sender.close()
    with pytest.raises(SettingsError, match="APNS_KEY_ID"):
        ApnsSender.from_settings(push_settings(standin_ca, apns_standin, apns_key_id=""))
    with pytest.raises(SettingsError, match="APNS_KEY"):
        ApnsSender.from_settings(push_settings(standin_ca, apns_standin, apns_key="nonsense"))
    with pytest.raises(SettingsError, match="APNS_URL"):
        ApnsSender.from_settings(push_settings(standin_ca, apns_standin, apns_url="http://x"))


# ---------------------------------------------------------------------------- Web Push


async def test_webpush_message_is_decrypted_to_the_exact_plaintext(
    webpush_standin: WebPushStandin, webpush_sender: WebPushSender, vapid_keys: vapid.VapidKeys
) -> None:
    subscription = webpush_standin.create_subscription(vapid_keys.public_key)
    data = json.dumps({"t": "like", "by": "ann ✓"}).encode() + bytes(range(256))
    outcome = await webpush_sender.send(
        message(subscription, data, ttl=3600, urgency="high", topic="likes")
    )
    assert outcome == Outcome("webpush", "sent", 201, "ok")
    (got,) = await webpush_standin.received.wait_for(1)
    assert got.plaintext == data
    assert (got.ttl, got.urgency, got.topic) == (3600, "high", "likes")
    assert got.headers["content-encoding"] == "aes128gcm"
    assert got.headers["authorization"].startswith("vapid t=")
    assert got.claims["aud"] == webpush_standin.url
    assert got.claims["sub"] == "mailto:ops@example.com"
    assert time.time() < got.claims["exp"] <= time.time() + 24 * 3600


async def test_webpush_without_payload_and_the_largest_payload(
    webpush_standin: WebPushStandin, webpush_sender: WebPushSender
) -> None:
    subscription = webpush_standin.create_subscription()
    assert (await webpush_sender.send(message(subscription, b""))).result == "sent"
    largest = b"x" * 3993
    assert (await webpush_sender.send(message(subscription, largest))).result == "sent"
    empty, full = await webpush_standin.received.wait_for(2)
    assert (empty.plaintext, full.plaintext) == (b"", largest)
    assert await webpush_sender.send(message(subscription, largest + b"x")) == Outcome(
        "webpush", "failed", None, "payload_too_large"
    )


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (WebPushAnswer(201), Outcome("webpush", "sent", 201, "ok")),
        (WebPushAnswer(404), Outcome("webpush", "invalid", 404, "http_404")),
        (WebPushAnswer(410), Outcome("webpush", "invalid", 410, "http_410")),
        (WebPushAnswer(413), Outcome("webpush", "failed", 413, "http_413")),
        (WebPushAnswer(429, 12), Outcome("webpush", "retry", 429, "http_429", 12.0)),
        (WebPushAnswer(500), Outcome("webpush", "retry", 500, "http_500")),
        (WebPushAnswer(503, 5), Outcome("webpush", "retry", 503, "http_503", 5.0)),
    ],
)
async def test_scripted_webpush_answers_map_to_outcomes(
    webpush_standin: WebPushStandin,
    webpush_sender: WebPushSender,
    answer: WebPushAnswer,
    expected: Outcome,
) -> None:
    subscription = webpush_standin.create_subscription()
    webpush_standin.script(subscription["endpoint"], answer)
    assert await webpush_sender.send(message(subscription)) == expected
    assert (await webpush_sender.send(message(subscription))).result == "sent"


async def test_unknown_and_unsubscribed_endpoints_are_invalid(
    webpush_standin: WebPushStandin, webpush_sender: WebPushSender
) -> None:
    subscription = webpush_standin.create_subscription()
    unknown = dict(subscription, endpoint=webpush_standin.endpoint("nobody"))
    assert (await webpush_sender.send(message(unknown))).status == 404
    webpush_standin.unsubscribe(subscription["endpoint"])
    assert await webpush_sender.send(message(subscription)) == Outcome(
        "webpush", "invalid", 410, "http_410"
    )


async def test_subscription_bound_to_another_vapid_key_is_refused(
    webpush_standin: WebPushStandin, webpush_sender: WebPushSender
) -> None:
    subscription = webpush_standin.create_subscription(vapid.generate().public_key)
    assert await webpush_sender.send(message(subscription)) == Outcome(
        "webpush", "failed", 403, "http_403"
    )
    (refusal,) = await webpush_standin.refused.wait_for(1)
    assert refusal.reason == "vapid_key_mismatch"


async def _hand_made_push(
    standin: WebPushStandin, ca: LocalCA, claims: dict[str, Any], *, forge: bool = False
) -> int:
    subscription = standin.create_subscription()
    signer = Vapid02()
    signer.generate_keys()
    auth = signer.sign(claims)["Authorization"]
    if forge:  # signed by one key, presented with another's public key
        other = Vapid02()
        other.generate_keys()
        good = other.sign(claims)["Authorization"]
        auth = auth.split(",k=")[0] + ",k=" + good.split(",k=")[1]
    body = WebPusher(subscription).encode(b"hi", "aes128gcm")["body"]
    headers = {"Authorization": auth, "TTL": "60", "Content-Encoding": "aes128gcm"}
    connector = aiohttp.TCPConnector(ssl=ca.client_context())
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(subscription["endpoint"], data=body, headers=headers) as response,
    ):
        return response.status


async def test_webpush_standin_refuses_a_bad_vapid_signature(
    standin_ca: LocalCA, webpush_standin: WebPushStandin
) -> None:
    claims = {"aud": webpush_standin.url, "sub": "mailto:a@example.com"}
    assert await _hand_made_push(webpush_standin, standin_ca, claims, forge=True) == 401
    assert await _hand_made_push(webpush_standin, standin_ca, dict(claims)) == 201
    assert [r.reason for r in webpush_standin.refused.items] == ["vapid_signature"]


async def test_webpush_standin_refuses_another_audience_or_a_long_exp(
    standin_ca: LocalCA, webpush_standin: WebPushStandin
) -> None:
    base = {"sub": "mailto:a@example.com"}
    wrong_aud = base | {"aud": "https://fcm.googleapis.com"}
    too_long = base | {"aud": webpush_standin.url, "exp": int(time.time()) + 48 * 3600}
    assert await _hand_made_push(webpush_standin, standin_ca, wrong_aud) == 401
    assert await _hand_made_push(webpush_standin, standin_ca, too_long) == 401
    reasons = [r.reason for r in webpush_standin.refused.items]
    assert reasons == ["vapid_audience", "vapid_exp_too_far"]
    assert webpush_standin.received.items == []


async def test_webpush_send_to_a_silent_server_times_out(
    standin_ca: LocalCA, vapid_keys: vapid.VapidKeys
) -> None:
    settings = push_settings(standin_ca, push_timeout_seconds=0.5)
    sender = WebPushSender.from_settings(settings, vapid_keys.private_pem)
    try:
        async with silent_server() as port:
            fake = {"endpoint": f"https://127.0.0.1:{port}/push/x", "keys": _ua_keys()}
            started = time.monotonic()
            outcome = await sender.send(message(fake))
            elapsed = time.monotonic() - started
    finally:
        await sender.close()
    assert outcome == Outcome("webpush", "retry", None, "timeout")
    assert 0.4 < elapsed < 1.5


def _ua_keys() -> dict[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_numbers()
    raw = b"\x04" + point.x.to_bytes(32, "big") + point.y.to_bytes(32, "big")
    b64 = base64.urlsafe_b64encode
    return {"p256dh": b64(raw).rstrip(b"=").decode(), "auth": b64(b"0" * 16).decode()}


async def test_webpush_redirects_are_not_followed(
    standin_ca: LocalCA, webpush_sender: WebPushSender
) -> None:
    """A redirect to an internal IP literal would bypass the resolver's check."""
    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPTemporaryRedirect("https://169.254.169.254/latest/meta-data/")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=standin_ca.server_context())
    await site.start()
    try:
        port = runner.addresses[0][1]
        target = {"endpoint": f"https://127.0.0.1:{port}/push/x", "keys": _ua_keys()}
        outcome = await webpush_sender.send(message(target))
    finally:
        await runner.cleanup()
    assert outcome == Outcome("webpush", "failed", 307, "http_307")
    assert hits == ["/push/x"]


async def test_webpush_sender_refuses_loopback_unless_allowed(
    standin_ca: LocalCA,
    webpush_standin: WebPushStandin,
    vapid_keys: vapid.VapidKeys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = push_settings(standin_ca, push_allow_loopback=False)
    sender = WebPushSender.from_settings(settings, vapid_keys.private_pem)
    subscription = webpush_standin.create_subscription()
    # A public-looking name whose DNS now answers with a loopback address (rebinding).
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def rebinding(host: Any, *args: Any, **kwargs: Any) -> Any:
        return await real("127.0.0.1" if host == "push.rebind.example" else host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", rebinding)
    rebound = dict(
        subscription,
        endpoint=subscription["endpoint"].replace("127.0.0.1", "push.rebind.example"),
    )
    try:
        direct = await sender.send(message(subscription))
        via_dns = await sender.send(message(rebound))
    finally:
        await sender.close()
    assert direct == Outcome("webpush", "invalid", None, "endpoint_address_not_public")
    assert via_dns == Outcome("webpush", "invalid", None, "endpoint_address_not_public")
    assert webpush_standin.received.items == []


async def test_webpush_bad_subscription_keys_are_invalid(
    webpush_standin: WebPushStandin, webpush_sender: WebPushSender
) -> None:
    subscription = webpush_standin.create_subscription()
    broken = dict(subscription, keys={"p256dh": "AAAA", "auth": subscription["keys"]["auth"]})
    assert await webpush_sender.send(message(broken)) == Outcome(
        "webpush", "invalid", None, "bad_keys"
    )


# ---------------------------------------------------------------------------- SSRF rules


@pytest.mark.parametrize(
    "url",
    [
        "http://fcm.googleapis.com/fcm/send/x",
        "file:///etc/passwd",
        "https://10.0.0.1/x",
        "https://127.0.0.1/x",
        "https://[::1]/x",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:169.254.169.254]/x",
        "https://[::ffff:10.0.0.1]/x",
        "https://[fe80::1]/x",
        "https://0.0.0.0/x",
        "https://224.0.0.1/x",
        "https://100.64.0.1/x",
        "https://[64:ff9b::a9fe:a9fe]/x",
        "https://127.1/x",
        "https://2130706433/x",
        "https://localhost/x",
        "https://push.localhost/x",
        "https://user:pw@fcm.googleapis.com/x",
        "https:///x",
        "https://fcm.googleapis.com/" + "x" * 2048,
        "https://fcm.googleapis.com/a b",
    ],
)
def test_endpoint_rules_reject(url: str) -> None:
    with pytest.raises(EndpointRejected) as caught:
        check_webpush_endpoint(url, allow_loopback=False)
    assert caught.value.code


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.216.34/x",
        "https://fcm.googleapis.com/fcm/send/abc:def",
        "https://updates.push.services.mozilla.com/wpush/v2/gAAAA",
        "https://[2606:4700:4700::1111]/x",
    ],
)
def test_endpoint_rules_accept_public(url: str) -> None:
    assert check_webpush_endpoint(url, allow_loopback=False) == url


def test_loopback_only_when_allowed() -> None:
    for url in ("https://127.0.0.1:8443/x", "https://[::1]/x", "https://localhost/x"):
        assert check_webpush_endpoint(url, allow_loopback=True) == url
    for url in ("https://10.0.0.1/x", "https://169.254.169.254/x", "https://0.0.0.0/x"):
        with pytest.raises(EndpointRejected):
            check_webpush_endpoint(url, allow_loopback=True)
    assert is_public_address("93.184.216.34", allow_loopback=False)
    assert not is_public_address("::ffff:127.0.0.1", allow_loopback=False)
    assert is_public_address("::ffff:127.0.0.1", allow_loopback=True)
    assert not is_public_address("not an address", allow_loopback=True)


async def test_resolve_public_checks_every_resolved_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    answers = {
        "rebind.example": ["93.184.216.34", "127.0.0.1"],
        "public.example": ["93.184.216.34"],
    }

    async def fake(host: str, port: int, **kwargs: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(loop, "getaddrinfo", fake)
    assert await resolve_public("public.example", 443, allow_loopback=False) == ["93.184.216.34"]
    with pytest.raises(EndpointRejected) as caught:
        await resolve_public("rebind.example", 443, allow_loopback=False)
    assert caught.value.code == "address_not_public"
    with pytest.raises(EndpointRejected) as caught:
        await resolve_public("nowhere.example", 443, allow_loopback=False)
    assert caught.value.code == "unresolvable"
    assert await resolve_public("93.184.216.34", 443, allow_loopback=False) == ["93.184.216.34"]


async def test_localhost_resolves_to_loopback_and_is_refused() -> None:
    with pytest.raises(EndpointRejected):
        await resolve_public("localhost", 443, allow_loopback=False)
    assert set(await resolve_public("localhost", 443, allow_loopback=True)) <= {
        "127.0.0.1",
        "::1",
    }


def test_retry_after_parsing() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = time.time()
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 30))
    assert 28 <= (parse_retry_after(date, now) or 0) <= 31
