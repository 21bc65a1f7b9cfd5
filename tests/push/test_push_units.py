"""Pure parts of the push worker: alert truncation, payload shapes, retry schedule, what
FCM's answers mean."""

from __future__ import annotations

import random
import unicodedata

import orjson
import pytest

from core.events import PushJob
from push import retry
from push.payloads import (
    ALERT_MAX_BYTES,
    ELLIPSIS,
    apns_payload,
    fcm_payload,
    truncate,
    webpush_payload,
)
from push.providers import Outcome
from push.providers.fcm import FcmMessage
from push.providers.fcm import outcome as fcm_outcome

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one emoji: man ZWJ woman ZWJ girl
FLAG_FR = "\U0001f1eb\U0001f1f7"
THUMBS_DARK = "\U0001f44d\U0001f3ff"
E_ACUTE_DECOMPOSED = "e\u0301"


def test_short_text_is_untouched() -> None:
    assert truncate("héllo 👋", 100) == "héllo 👋"


@pytest.mark.parametrize("limit", range(4, 40))
@pytest.mark.parametrize(
    "text",
    [
        "x" * 60,
        "日本語のテキスト" * 5,
        FAMILY * 10,
        FLAG_FR * 12,
        THUMBS_DARK * 10,
        E_ACUTE_DECOMPOSED * 30,
        "ab" + "\u0627\u0644\u0639\u0631\u0628\u064a\u0629" * 6,  # RTL
    ],
)
def test_truncation_fits_and_never_splits_a_character(text: str, limit: int) -> None:
    cut = truncate(text, limit)
    assert len(cut.encode()) <= limit
    assert cut.endswith(ELLIPSIS)
    kept = cut[: -len(ELLIPSIS)]
    assert text.startswith(kept)
    rest = text[len(kept) :]
    # What was dropped starts a new user-perceived character: no accent, modifier or
    # joiner left orphaned, no half flag.
    assert rest and unicodedata.combining(rest[0]) == 0
    assert rest[0] not in ("\u200d", "\U0001f3ff") and not kept.endswith("\u200d")
    flags = sum(1 for ch in kept if 0x1F1E6 <= ord(ch) <= 0x1F1FF)
    assert flags % 2 == 0


def test_feed_push_is_silent_and_alert_is_visible() -> None:
    feed = PushJob(kind="feed", user_id=1, created_at_ms=0, post_id=42)
    push_type, payload = apns_payload(feed)
    assert push_type == "background"
    assert payload["aps"] == {"content-available": 1} and payload["post_id"] == "42"
    alert = PushJob(kind="alert", user_id=1, created_at_ms=0, text="ada liked your post")
    push_type, payload = apns_payload(alert)
    assert push_type == "alert"
    assert payload["aps"]["alert"]["body"] == "ada liked your post"
    web = orjson.loads(webpush_payload(alert))
    assert web["kind"] == "alert" and web["body"] == "ada liked your post"


def test_long_alert_payloads_stay_small() -> None:
    alert = PushJob(kind="alert", user_id=1, created_at_ms=0, text="😀" * 5000)
    assert len(orjson.dumps(apns_payload(alert)[1])) < 1024
    assert len(webpush_payload(alert)) < 1024
    data, notification = fcm_payload(alert)
    assert notification is not None
    message = FcmMessage(token="t" * 40, data=data, ttl=60, notification=notification)
    assert message.payload_size() < 1024


def test_fcm_feed_push_is_data_only_and_alert_a_notification_with_a_link() -> None:
    feed = PushJob(kind="feed", user_id=1, created_at_ms=0, post_id=42)
    assert fcm_payload(feed) == ({"kind": "feed", "post_id": "42"}, None)
    like = PushJob(kind="alert", user_id=1, created_at_ms=0, text="ada liked it", post_id=7)
    data, notification = fcm_payload(like)
    assert data == {"kind": "alert", "post_id": "7", "link": "feed://posts/7"}
    assert notification == ("feed", "ada liked it")
    follow = PushJob(kind="alert", user_id=1, created_at_ms=0, text="ada follows you")
    assert fcm_payload(follow)[0]["link"] == "feed://notifications"


@pytest.mark.parametrize("text", [FAMILY * 200, FLAG_FR * 300, E_ACUTE_DECOMPOSED * 600])
def test_fcm_alert_text_is_cut_at_a_character_boundary_as_for_the_others(text: str) -> None:
    job = PushJob(kind="alert", user_id=1, created_at_ms=0, text=text)
    notification = fcm_payload(job)[1]
    assert notification is not None
    body = notification[1]
    assert body == truncate(text, ALERT_MAX_BYTES)  # the same cut as APNs and Web Push
    assert body == apns_payload(job)[1]["aps"]["alert"]["body"]
    assert len(body.encode()) <= ALERT_MAX_BYTES and body.endswith(ELLIPSIS)
    assert text.startswith(body[: -len(ELLIPSIS)])


def _fcm_error(status: int, rpc: str, message: str, *details: dict[str, object]) -> bytes:
    body = {"error": {"code": status, "message": message, "status": rpc, "details": details}}
    return orjson.dumps(body)


def _code(error_code: str) -> dict[str, object]:
    return {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b'{"name": "projects/p/messages/1"}', ("sent", "ok")),
        (
            404,
            _fcm_error(404, "NOT_FOUND", "gone", _code("UNREGISTERED")),
            ("invalid", "UNREGISTERED"),
        ),
        # The real answer to a malformed token carries no field violation, only its text.
        (
            400,
            _fcm_error(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                _code("INVALID_ARGUMENT"),
            ),
            ("invalid", "INVALID_ARGUMENT"),
        ),
        (
            400,
            _fcm_error(
                400,
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
                _code("INVALID_ARGUMENT"),
            ),
            ("failed", "INVALID_ARGUMENT"),
        ),
        # A 404 that is not about the token (a wrong project, a proxy) disables nothing.
        (
            404,
            _fcm_error(404, "NOT_FOUND", "Requested entity was not found."),
            ("failed", "NOT_FOUND"),
        ),
        (502, b"<html>Bad Gateway</html>", ("retry", "http_502")),
        (429, _fcm_error(429, "RESOURCE_EXHAUSTED", "quota"), ("retry", "RESOURCE_EXHAUSTED")),
        (418, b"{}", ("failed", "http_418")),
        (
            400,
            _fcm_error(400, "INVALID_ARGUMENT", "x", _code("SOMETHING_NEW")),
            ("failed", "INVALID_ARGUMENT"),
        ),
    ],
)
def test_fcm_answers_mean_what_fcm_documents(
    status: int, body: bytes, expected: tuple[str, str]
) -> None:
    result = fcm_outcome(status, body, 5.0)
    assert (result.result, result.reason) == expected
    assert result.provider == "fcm" and result.status == status
    if result.result == "retry":
        assert result == Outcome("fcm", "retry", status, expected[1], 5.0)


def test_retry_backs_off_with_jitter_and_honours_retry_after() -> None:
    rng = random.Random(7)
    delays = [retry.next_delay(n, None, 0, 10_000, rng) for n in range(1, 6)]
    assert all(d is not None for d in delays)
    for n, delay in enumerate(delays, start=1):
        ceiling = min(retry.MAX_DELAY, retry.BASE_DELAY * 2 ** (n - 1))
        assert delay is not None and ceiling / 2 <= delay <= ceiling
    assert retry.next_delay(1, 30.0, 0, 10_000, rng) == 30.0


def test_retry_gives_up_at_the_deadline_and_after_max_attempts() -> None:
    assert retry.next_delay(1, 120.0, 0, 60, random.Random(1)) is None
    assert retry.next_delay(retry.MAX_ATTEMPTS, None, 0, 10_000) is None
    assert retry.next_delay(retry.MAX_ATTEMPTS - 1, None, 0, 10_000) is not None
