"""What a push says. Small stubs only: the app fetches the real content from
/v1/feed/delta, so payloads stay far below APNs' and FCM's 4 KB and Web Push's ~4 KB
after encryption, and alert texts are cut at a character boundary, never inside one."""

from __future__ import annotations

import unicodedata
from typing import Any, Literal

import orjson

from core.events import PushJob

ALERT_TITLE = "feed"
ALERT_MAX_BYTES = 512  # of UTF-8 text in the body: a lock screen shows ~150 characters
ELLIPSIS = "…"
ZWJ = "\u200d"
# apns-collapse-id / FCM android.collapse_key / Web Push Topic: one pending "new posts"
FEED_COLLAPSE_ID = "feed"
# Where the Android app goes when an alert is tapped (its intent filter claims the scheme).
ANDROID_LINK_SCHEME = "feed"


def _extends_previous(char: str) -> bool:
    """A code point that belongs to the character before it: combining marks, variation
    selectors, emoji skin-tone modifiers, a zero-width joiner."""
    code = ord(char)
    return (
        unicodedata.combining(char) != 0
        or unicodedata.category(char) in ("Mn", "Me", "Mc")
        or 0xFE00 <= code <= 0xFE0F
        or 0xE0100 <= code <= 0xE01EF
        or 0x1F3FB <= code <= 0x1F3FF
        or 0xE0020 <= code <= 0xE007F  # emoji tag sequences (subdivision flags)
        or char == ZWJ
    )


def _is_regional_indicator(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


def truncate(text: str, max_bytes: int) -> str:
    """`text` if its UTF-8 fits in `max_bytes`, else its longest prefix that fits with an
    ellipsis, cut between user-perceived characters: never inside a code point, never
    between a letter and its accent, inside an emoji ZWJ sequence or a flag's pair."""
    if len(text.encode()) <= max_bytes:
        return text
    budget = max_bytes - len(ELLIPSIS.encode())
    cut, used = 0, 0
    for char in text:
        size = len(char.encode())
        if used + size > budget:
            break
        used += size
        cut += 1
    # Step back while the next code point would have extended the last kept one.
    while cut > 0 and (_extends_previous(text[cut]) or text[cut - 1] == ZWJ):
        cut -= 1
    # Flags are pairs of regional indicators: an odd run at the end is half a flag.
    run = 0
    while run < cut and _is_regional_indicator(text[cut - 1 - run]):
        run += 1
    if run % 2:
        cut -= 1
    return text[:cut].rstrip() + ELLIPSIS


def apns_payload(job: PushJob) -> tuple[Literal["alert", "background"], dict[str, Any]]:
    """(apns-push-type, payload). A feed push is silent (background, content-available)
    and wakes the app to fetch /v1/feed/delta; an alert is shown."""
    extra: dict[str, Any] = {"kind": job.kind}
    if job.post_id is not None:
        extra["post_id"] = str(job.post_id)
    if job.kind == "feed":
        return "background", {"aps": {"content-available": 1}, **extra}
    alert = {"title": ALERT_TITLE, "body": truncate(job.text, ALERT_MAX_BYTES)}
    return "alert", {"aps": {"alert": alert, "sound": "default"}, **extra}


def webpush_payload(job: PushJob) -> bytes:
    """The JSON the service worker receives (web/static/sw.js shows it)."""
    body: dict[str, Any] = {"kind": job.kind, "url": "/"}
    if job.post_id is not None:
        body["post_id"] = str(job.post_id)
    if job.kind == "feed":
        body.update(title=ALERT_TITLE, body="New posts in your feed")
    else:
        body.update(title=ALERT_TITLE, body=truncate(job.text, ALERT_MAX_BYTES))
    return orjson.dumps(body)


def fcm_payload(job: PushJob) -> tuple[dict[str, str], tuple[str, str] | None]:
    """(data, notification as (title, body)). A feed push is a data message only: it
    wakes the app's messaging service, which fetches /v1/feed/delta, and shows nothing.
    An alert is a notification message Android shows itself; its `link` (a deep link to
    the post, or to the notifications) is what the app opens when it is tapped. FCM
    takes string values only in `data`."""
    data: dict[str, str] = {"kind": job.kind}
    if job.post_id is not None:
        data["post_id"] = str(job.post_id)
    if job.kind == "feed":
        return data, None
    target = f"posts/{job.post_id}" if job.post_id is not None else "notifications"
    data["link"] = f"{ANDROID_LINK_SCHEME}://{target}"
    return data, (ALERT_TITLE, truncate(job.text, ALERT_MAX_BYTES))
