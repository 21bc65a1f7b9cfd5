"""The FCM adapter (google-auth service-account tokens, FCM HTTP v1 on aiohttp) against a
stand-in that speaks Google's OAuth 2.0 jwt-bearer grant and FCM v1's `messages:send`,
and the stand-in's own checks. No stack."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from core.settings import SettingsError
from push.providers import Outcome
from push.providers.fcm import FcmMessage, FcmSender
from standins.__main__ import control_app
from standins.apns import ApnsStandin
from standins.fcm import (
    GOOGLE_OAUTH_AUDIENCE,
    JWT_BEARER,
    FcmAnswer,
    FcmStandin,
    registration_token,
)
from standins.tls import LocalCA
from standins.webpush import WebPushStandin
from tests.support import standins as support
from tests.support.standins import push_settings, silent_server

standin_ca = support.standin_ca
fcm_standin = support.fcm_standin
apns_standin = support.apns_standin
webpush_standin = support.webpush_standin

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


@pytest.fixture
async def fcm_sender(standin_ca: LocalCA, fcm_standin: FcmStandin) -> AsyncIterator[FcmSender]:
    sender = FcmSender.from_settings(push_settings(standin_ca, fcm=fcm_standin))
    assert sender is not None
    yield sender
    await sender.close()


def feed(token: str, **changes: Any) -> FcmMessage:
    fields: dict[str, Any] = {
        "token": token,
        "data": {"kind": "feed", "post_id": "42"},
        "ttl": 600,
        "priority": "NORMAL",
        "collapse_key": "feed",
    }
    return FcmMessage(**(fields | changes))


def alert(token: str, body: str = "ada liked your post") -> FcmMessage:
    return FcmMessage(
        token=token,
        data={"kind": "alert", "link": "feed://posts/42"},
        ttl=86_400,
        priority="HIGH",
        notification=("feed", body),
    )


async def raw_post(
    url: str,
    ca: LocalCA,
    *,
    data: bytes,
    headers: dict[str, str],
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One hand-made request (for what the adapter would never send)."""
    connector = aiohttp.TCPConnector(ssl=ca.client_context())
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(url, data=data, headers=headers) as response,
    ):
        return response.status, dict(response.headers), await response.json(content_type=None)


# ---------------------------------------------------------------------------- sending


async def test_a_feed_push_is_a_collapsible_data_message_with_a_minted_token(
    fcm_standin: FcmStandin, fcm_sender: FcmSender
) -> None:
    token = registration_token()
    assert await fcm_sender.send(feed(token)) == Outcome("fcm", "sent", 200, "ok")
    (got,) = await fcm_standin.received.wait_for(1)
    assert got.project == fcm_standin.project_id and got.token == token
    assert got.message == {
        "token": token,
        "data": {"kind": "feed", "post_id": "42"},
        "android": {"priority": "NORMAL", "ttl": "600s", "collapse_key": "feed"},
    }
    (grant,) = fcm_standin.grants.items
    assert got.access_token == grant.access_token
    assert got.headers["authorization"] == f"Bearer {grant.access_token}"
    assert grant.jwt_header["alg"] == "RS256" and grant.jwt_header["kid"] == fcm_standin.key_id
    claims = grant.claims
    assert claims["iss"] == fcm_standin.client_email
    assert claims["aud"] == GOOGLE_OAUTH_AUDIENCE
    assert claims["scope"] == FCM_SCOPE
    assert abs(claims["iat"] - time.time()) < 60 and claims["exp"] - claims["iat"] <= 3600


async def test_an_alert_is_a_high_priority_notification_message(
    fcm_standin: FcmStandin, fcm_sender: FcmSender
) -> None:
    token = registration_token()
    assert (await fcm_sender.send(alert(token))).result == "sent"
    (got,) = await fcm_standin.received.wait_for(1)
    assert got.message["notification"] == {"title": "feed", "body": "ada liked your post"}
    assert got.message["android"] == {"priority": "HIGH", "ttl": "86400s"}
    assert got.message["data"]["link"] == "feed://posts/42"


async def test_the_access_token_is_cached_and_shared_by_concurrent_sends(
    fcm_standin: FcmStandin, fcm_sender: FcmSender
) -> None:
    tokens = [registration_token() for _ in range(20)]
    outcomes = await asyncio.gather(*(fcm_sender.send(feed(t)) for t in tokens))
    assert {o.result for o in outcomes} == {"sent"}
    assert (await fcm_sender.send(feed(tokens[0]))).result == "sent"
    assert len(fcm_standin.grants) == 1 and fcm_sender.tokens.minted == 1
    assert len({r.access_token for r in fcm_standin.received.items}) == 1


async def test_an_expired_access_token_is_replaced_once_and_the_push_delivered(
    fcm_standin: FcmStandin, fcm_sender: FcmSender
) -> None:
    token = registration_token()
    assert (await fcm_sender.send(feed(token))).result == "sent"
    fcm_standin.expire_tokens()  # an hour passed, or Google revoked it early
    assert (await fcm_sender.send(feed(token))).result == "sent"
    first, second = await fcm_standin.received.wait_for(2)
    assert len(fcm_standin.grants) == 2
    assert first.access_token != second.access_token
    (refusal,) = fcm_standin.refused.items
    assert (refusal.status, refusal.error) == (401, "UNAUTHENTICATED")


async def test_short_lived_tokens_are_used_and_replaced_when_stale(standin_ca: LocalCA) -> None:
    """google-auth calls a token stale minutes before it expires; one minted with less
    life than that is still used once, then replaced."""
    async with FcmStandin(standin_ca, token_lifetime=60) as standin:
        sender = FcmSender.from_settings(push_settings(standin_ca, fcm=standin))
        assert sender is not None
        try:
            for _ in range(2):
                assert (await sender.send(feed(registration_token()))).result == "sent"
        finally:
            await sender.close()
        assert len(standin.grants) == 2 and len(standin.received) == 2


async def test_a_token_refused_twice_is_not_refreshed_again(
    fcm_standin: FcmStandin, fcm_sender: FcmSender
) -> None:
    token = registration_token()
    fcm_standin.script(token, FcmAnswer("UNAUTHENTICATED"), FcmAnswer("UNAUTHENTICATED"))
    assert await fcm_sender.send(feed(token)) == Outcome("fcm", "failed", 401, "UNAUTHENTICATED")
    assert len(fcm_standin.grants) == 2  # the first token, and one replacement
    assert len(fcm_standin.received) == 2


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (FcmAnswer("UNREGISTERED"), Outcome("fcm", "invalid", 404, "UNREGISTERED")),
        (FcmAnswer("INVALID_ARGUMENT"), Outcome("fcm", "invalid", 400, "INVALID_ARGUMENT")),
        (
            FcmAnswer("INVALID_ARGUMENT", field="message.android.ttl"),
            Outcome("fcm", "failed", 400, "INVALID_ARGUMENT"),
        ),
        (
            FcmAnswer("SENDER_ID_MISMATCH"),
            Outcome("fcm", "invalid", 403, "SENDER_ID_MISMATCH"),
        ),
        (
            FcmAnswer("QUOTA_EXCEEDED", retry_after=30),
            Outcome("fcm", "retry", 429, "QUOTA_EXCEEDED", 30.0),
        ),
        (FcmAnswer("UNAVAILABLE"), Outcome("fcm", "retry", 503, "UNAVAILABLE")),
        (FcmAnswer("INTERNAL"), Outcome("fcm", "retry", 500, "INTERNAL")),
        (
            FcmAnswer("THIRD_PARTY_AUTH_ERROR"),
            Outcome("fcm", "failed", 401, "THIRD_PARTY_AUTH_ERROR"),
        ),
    ],
)
async def test_scripted_fcm_answers_map_to_outcomes(
    fcm_standin: FcmStandin, fcm_sender: FcmSender, answer: FcmAnswer, expected: Outcome
) -> None:
    token = registration_token()
    fcm_standin.script(token, answer)
    assert await fcm_sender.send(feed(token)) == expected
    # The script is used up: the next push to the device goes through.
    assert (await fcm_sender.send(feed(token))).result == "sent"


async def test_error_answers_have_fcm_v1_json_shape(
    standin_ca: LocalCA, fcm_standin: FcmStandin
) -> None:
    token = registration_token()
    fcm_standin.script(token, FcmAnswer("UNREGISTERED"), FcmAnswer("QUOTA_EXCEEDED", 7))
    access = await _grant(standin_ca, fcm_standin, fcm_standin.make_assertion())
    url = f"{fcm_standin.url}/v1/projects/{fcm_standin.project_id}/messages:send"
    headers = {"Authorization": f"Bearer {access}", "Content-Type": "application/json"}
    body = json.dumps({"message": {"token": token}}).encode()
    status, _, gone = await raw_post(url, standin_ca, data=body, headers=headers)
    assert status == 404
    assert gone == {
        "error": {
            "code": 404,
            "message": "Requested entity was not found.",
            "status": "NOT_FOUND",
            "details": [
                {
                    "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                    "errorCode": "UNREGISTERED",
                }
            ],
        }
    }
    status, reply_headers, quota = await raw_post(url, standin_ca, data=body, headers=headers)
    assert (status, reply_headers["Retry-After"]) == (429, "7")
    assert quota["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert quota["error"]["details"][0]["errorCode"] == "QUOTA_EXCEEDED"


async def test_an_uninstalled_app_is_unregistered(
    fcm_standin: FcmStandin, fcm_sender: FcmSender
) -> None:
    token = registration_token()
    fcm_standin.unregister(token)
    assert await fcm_sender.send(alert(token)) == Outcome("fcm", "invalid", 404, "UNREGISTERED")
    assert fcm_standin.received.items == []


async def test_adapter_refuses_locally_what_fcm_would_refuse(
    fcm_standin: FcmStandin, fcm_sender: FcmSender
) -> None:
    assert await fcm_sender.send(feed("not a token")) == Outcome(
        "fcm", "invalid", None, "INVALID_ARGUMENT"
    )
    big = feed(registration_token(), data={"kind": "feed", "x": "y" * 4096})
    assert await fcm_sender.send(big) == Outcome("fcm", "failed", None, "payload_too_large")
    with pytest.raises(ValueError, match="priority"):
        feed("t", priority="URGENT")
    assert fcm_standin.received.items == [] and fcm_standin.grants.items == []


# ---------------------------------------------------------------------------- the token endpoint


async def _grant(ca: LocalCA, standin: FcmStandin, assertion: str) -> str:
    form = urllib.parse.urlencode({"grant_type": JWT_BEARER, "assertion": assertion}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, body = await raw_post(standin.url + "/token", ca, data=form, headers=headers)
    assert status == 200, body
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    token: str = body["access_token"]
    return token


def _foreign_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


ASSERTIONS = [
    pytest.param({"key": _foreign_key}, "invalid_grant", id="forged_signature"),
    pytest.param({"iss": "someone@else.iam.gserviceaccount.com"}, "invalid_grant", id="other_iss"),
    pytest.param({"aud": "https://fcm.googleapis.com/"}, "invalid_grant", id="wrong_aud"),
    pytest.param(
        {"scope": "https://www.googleapis.com/auth/userinfo.email"},
        "invalid_scope",
        id="wrong_scope",
    ),
    pytest.param(
        {"iat": lambda now: now - 7200, "exp": lambda now: now - 3600},
        "invalid_grant",
        id="expired",
    ),
    pytest.param(
        {"iat": lambda now: now, "exp": lambda now: now + 7200}, "invalid_grant", id="too_long"
    ),
    pytest.param(
        {"iat": lambda now: now + 600, "exp": lambda now: now + 1200},
        "invalid_grant",
        id="from_the_future",
    ),
]


@pytest.mark.parametrize(("change", "error"), ASSERTIONS)
async def test_token_endpoint_refuses_bad_assertions(
    standin_ca: LocalCA, fcm_standin: FcmStandin, change: dict[str, Any], error: str
) -> None:
    now = int(time.time())
    key = change["key"]() if "key" in change else None
    claims = {
        name: value(now) if callable(value) else value
        for name, value in change.items()
        if name != "key"
    }
    assertion = fcm_standin.make_assertion(key, **claims)
    form = urllib.parse.urlencode({"grant_type": JWT_BEARER, "assertion": assertion}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, body = await raw_post(
        fcm_standin.url + "/token", standin_ca, data=form, headers=headers
    )
    assert (status, body["error"]) == (400, error)
    (refusal,) = fcm_standin.grant_refusals.items
    assert refusal.error == error
    assert fcm_standin.grants.items == []


async def test_token_endpoint_needs_the_jwt_bearer_grant(
    standin_ca: LocalCA, fcm_standin: FcmStandin
) -> None:
    form = urllib.parse.urlencode(
        {"grant_type": "client_credentials", "assertion": fcm_standin.make_assertion()}
    ).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, body = await raw_post(
        fcm_standin.url + "/token", standin_ca, data=form, headers=headers
    )
    assert (status, body["error"]) == (400, "unsupported_grant_type")


async def test_a_sender_with_a_foreign_key_gets_no_token_and_sends_nothing(
    standin_ca: LocalCA, fcm_standin: FcmStandin
) -> None:
    """Right account and key id, wrong private key: Google refuses the assertion, and the
    push is dropped (retrying with the same key cannot help)."""
    forged = fcm_standin.credentials() | {"private_key": FcmStandin(standin_ca).private_key_pem}
    settings = push_settings(standin_ca, fcm=fcm_standin, fcm_credentials=json.dumps(forged))
    sender = FcmSender.from_settings(settings)
    assert sender is not None
    try:
        outcome = await sender.send(feed(registration_token()))
    finally:
        await sender.close()
    assert outcome == Outcome("fcm", "failed", None, "token_refused")
    (refusal,) = fcm_standin.grant_refusals.items
    assert refusal.description == "Invalid JWT Signature."
    assert fcm_standin.received.items == []


# ---------------------------------------------------------------------------- messages:send checks


async def test_send_without_a_valid_access_token_is_unauthenticated(
    standin_ca: LocalCA, fcm_standin: FcmStandin
) -> None:
    url = f"{fcm_standin.url}/v1/projects/{fcm_standin.project_id}/messages:send"
    body = json.dumps({"message": {"token": registration_token()}}).encode()
    for auth in ({}, {"Authorization": "Bearer ya29.made-up"}):
        headers = {"Content-Type": "application/json", **auth}
        status, reply_headers, error = await raw_post(url, standin_ca, data=body, headers=headers)
        assert status == 401 and reply_headers["WWW-Authenticate"].startswith("Bearer")
        assert error["error"]["status"] == "UNAUTHENTICATED"
    assert fcm_standin.received.items == []


MESSAGES = [
    pytest.param({"token": "x"}, "message.token", id="bad_token"),
    pytest.param({"topic": "news"}, "message", id="no_token"),
    pytest.param({"extra": 1}, "message", id="unknown_field"),
    pytest.param({"data": {"n": 1}}, "message.data", id="data_not_strings"),
    pytest.param({"data": {"google.x": "1"}}, "message.data", id="reserved_data_key"),
    pytest.param({"android": {"ttl": "3600"}}, "message.android.ttl", id="ttl_not_duration"),
    pytest.param({"android": {"ttl": "9999999s"}}, "message.android.ttl", id="ttl_too_long"),
    pytest.param({"android": {"priority": "URGENT"}}, "message.android.priority", id="priority"),
    pytest.param({"android": {"sound": "x"}}, "message.android", id="unknown_android_field"),
    pytest.param({"data": {"x": "y" * 4100}}, "message", id="too_big"),
]


@pytest.mark.parametrize(("change", "field"), MESSAGES)
async def test_send_refuses_an_invalid_message(
    standin_ca: LocalCA, fcm_standin: FcmStandin, change: dict[str, Any], field: str
) -> None:
    access = await _grant(standin_ca, fcm_standin, fcm_standin.make_assertion())
    message = {"token": registration_token()} | change
    if "topic" in change:
        del message["token"]
    url = f"{fcm_standin.url}/v1/projects/{fcm_standin.project_id}/messages:send"
    headers = {"Authorization": f"Bearer {access}", "Content-Type": "application/json"}
    body = json.dumps({"message": message}).encode()
    status, _, error = await raw_post(url, standin_ca, data=body, headers=headers)
    assert (status, error["error"]["status"]) == (400, "INVALID_ARGUMENT")
    details = {d["@type"].rsplit(".", 1)[-1]: d for d in error["error"]["details"]}
    assert details["FcmError"]["errorCode"] == "INVALID_ARGUMENT"
    assert details["BadRequest"]["fieldViolations"][0]["field"] == field
    assert fcm_standin.received.items == []


async def test_send_to_another_project_is_denied(
    standin_ca: LocalCA, fcm_standin: FcmStandin
) -> None:
    access = await _grant(standin_ca, fcm_standin, fcm_standin.make_assertion())
    url = f"{fcm_standin.url}/v1/projects/someone-elses/messages:send"
    headers = {"Authorization": f"Bearer {access}", "Content-Type": "application/json"}
    body = json.dumps({"message": {"token": registration_token()}}).encode()
    status, _, error = await raw_post(url, standin_ca, data=body, headers=headers)
    assert (status, error["error"]["status"]) == (403, "PERMISSION_DENIED")


# ---------------------------------------------------------------------------- settings, timeouts


async def test_fcm_sender_from_settings(
    standin_ca: LocalCA, fcm_standin: FcmStandin, tmp_path: Path
) -> None:
    assert FcmSender.from_settings(push_settings(standin_ca)) is None
    key_file = fcm_standin.write_credentials(tmp_path / "service-account.json")
    from_file = push_settings(
        standin_ca, fcm_url=fcm_standin.url, fcm_credentials_file=str(key_file)
    )
    sender = FcmSender.from_settings(from_file)
    assert sender is not None
    try:
        assert sender.endpoint.endswith(f"/v1/projects/{fcm_standin.project_id}/messages:send")
        assert (await sender.send(feed(registration_token()))).result == "sent"
    finally:
        await sender.close()
    other = push_settings(standin_ca, fcm=fcm_standin, fcm_project_id="other-project")
    sender = FcmSender.from_settings(other)
    assert sender is not None
    try:
        assert "/projects/other-project/" in sender.endpoint
        assert (await sender.send(feed(registration_token()))).status == 403
    finally:
        await sender.close()
    info = fcm_standin.credentials()
    bad: list[tuple[dict[str, Any], str]] = [
        ({"fcm_credentials": "{not json"}, "not JSON"),
        ({"fcm_credentials": json.dumps(info | {"type": "authorized_user"})}, "service_account"),
        ({"fcm_credentials": json.dumps(info | {"token_uri": "http://x/token"})}, "https"),
        ({"fcm_credentials": json.dumps(info | {"private_key": "nonsense"})}, "usable key"),
        (
            {"fcm_credentials": "", "fcm_credentials_file": str(tmp_path / "missing.json")},
            "FCM_CREDENTIALS_FILE",
        ),
        ({"fcm_url": "http://fcm.example"}, "FCM_URL"),
        ({"fcm_project_id": "Not A Project"}, "FCM_PROJECT_ID"),
    ]
    for change, message in bad:
        with pytest.raises(SettingsError, match=message):
            FcmSender.from_settings(push_settings(standin_ca, fcm=fcm_standin, **change))


async def test_fcm_send_to_a_silent_server_times_out(
    standin_ca: LocalCA, fcm_standin: FcmStandin
) -> None:
    async with silent_server() as port:
        # The token comes from the stand-in; messages:send never answers.
        settings = push_settings(
            standin_ca,
            fcm=fcm_standin,
            fcm_url=f"https://127.0.0.1:{port}",
            push_timeout_seconds=0.5,
        )
        sender = FcmSender.from_settings(settings)
        assert sender is not None
        try:
            outcome = await sender.send(feed(registration_token()))
        finally:
            await sender.close()
    assert outcome == Outcome("fcm", "retry", None, "timeout")


async def test_a_silent_token_service_is_retried_later(
    standin_ca: LocalCA, fcm_standin: FcmStandin
) -> None:
    async with silent_server() as port:
        info = fcm_standin.credentials() | {"token_uri": f"https://127.0.0.1:{port}/token"}
        settings = push_settings(
            standin_ca,
            fcm=fcm_standin,
            fcm_credentials=json.dumps(info),
            push_timeout_seconds=0.5,
        )
        sender = FcmSender.from_settings(settings)
        assert sender is not None
        try:
            outcome = await sender.send(feed(registration_token()))
        finally:
            await sender.close()
    assert outcome.provider == "fcm" and outcome.result == "retry"
    assert outcome.reason in ("token_connection", "token_timeout")
    assert fcm_standin.received.items == []


async def test_the_demo_control_api_scripts_and_shows_fcm(
    aiohttp_client: Any,
    apns_standin: ApnsStandin,
    webpush_standin: WebPushStandin,
    fcm_standin: FcmStandin,
    fcm_sender: FcmSender,
) -> None:
    control = await aiohttp_client(control_app(apns_standin, webpush_standin, fcm_standin))
    resp = await control.post("/fcm/tokens")
    assert resp.status == 201
    token = (await resp.json())["token"]
    script = {"kind": "fcm", "token": token, "answers": [{"error": "UNREGISTERED"}, {}]}
    assert (await control.post("/script", json=script)).status == 200
    bad = {"kind": "fcm", "token": token, "answers": [{"error": "NOPE"}]}
    assert (await control.post("/script", json=bad)).status == 400
    assert (await fcm_sender.send(feed(token))).reason == "UNREGISTERED"
    assert (await fcm_sender.send(feed(token))).result == "sent"
    received = await (await control.get("/received")).json()
    assert [(r["token"], r["status"]) for r in received["fcm"]] == [(token, 404), (token, 200)]
    assert received["fcm_grants"] == 1
