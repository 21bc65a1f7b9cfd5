"""Pure parts of the push worker: alert truncation, payload shapes, retry schedule."""

from __future__ import annotations

import random
import unicodedata

import orjson
import pytest

from core.events import PushJob
from push import retry
from push.payloads import ELLIPSIS, apns_payload, truncate, webpush_payload

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
