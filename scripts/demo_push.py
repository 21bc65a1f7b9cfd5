"""Shows pushes happening end to end, against a system started with `make demo`:

    .venv/bin/python scripts/demo_push.py

Signs up two people, gives the first an iPhone (APNs token), an Android phone (an FCM
registration token) and a browser (a Web Push subscription made by the Web Push
stand-in, bound to this deployment's VAPID key), has her follow the second, who posts
twice and likes her post while she is offline. Then it prints what the stand-ins
received: one coalesced silent "feed" push and one visible alert per device, the FCM
ones sent with an OAuth 2.0 access token minted from the service-account key, the Web
Push ones decrypted by the stand-in exactly as a browser would.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
API = f"http://127.0.0.1:{os.environ.get('SERVER_PORT', '8080')}"
# What `python -m standins` wrote; STANDINS_ENV points elsewhere (a second demo).
STANDINS_ENV = Path(os.environ.get("STANDINS_ENV", ROOT / ".stack" / "standins" / "standins.env"))
WAIT_SECONDS = 30


def call(method: str, url: str, body: Any = None, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            raw = response.read()
    except urllib.error.HTTPError as exc:
        sys.exit(f"demo: {method} {url} answered {exc.code}: {exc.read().decode()[:300]}")
    except urllib.error.URLError as exc:
        sys.exit(f"demo: {url} is not answering ({exc.reason}); start the system with `make demo`")
    return json.loads(raw) if raw else None


def control_url() -> str:
    if not STANDINS_ENV.exists():
        sys.exit("demo: no push stand-ins running; start the system with `make demo`")
    for line in STANDINS_ENV.read_text().splitlines():
        if line.startswith("STANDINS_CONTROL_URL="):
            return line.partition("=")[2].strip()
    sys.exit(f"demo: STANDINS_CONTROL_URL missing from {STANDINS_ENV}")


def sign_up(prefix: str) -> dict[str, Any]:
    handle = f"{prefix}_{secrets.token_hex(3)}"
    user: dict[str, Any] = call(
        "POST", f"{API}/v1/users", {"handle": handle, "password": "demo-pass-1"}
    )
    print(f"  signed up @{user['handle']}")
    return user


def main() -> None:
    control = control_url()
    seen_before = call("GET", f"{control}/received")
    skip = {kind: len(seen_before[kind]) for kind in ("apns", "fcm", "webpush")}
    print("1. people")
    ada, bob = sign_up("ada"), sign_up("bob")

    print("2. ada's devices")
    token = secrets.token_hex(32)
    call("POST", f"{API}/v1/devices", {"kind": "apns", "token": token}, ada["token"])
    print(f"  iPhone: APNs token …{token[-8:]}")
    android = call("POST", f"{control}/fcm/tokens")["token"]
    call("POST", f"{API}/v1/devices", {"kind": "fcm", "token": android}, ada["token"])
    print(f"  Android: FCM registration token …{android[-8:]}")
    key = call("GET", f"{API}/v1/push/vapid-public-key")["public_key"]
    subscription = call("POST", f"{control}/subscriptions", {"application_server_key": key})
    call(
        "POST", f"{API}/v1/devices", {"kind": "webpush", "subscription": subscription}, ada["token"]
    )
    print(f"  browser: Web Push endpoint {subscription['endpoint']}")

    print("3. ada follows bob and goes offline; bob posts twice and likes ada's post")
    call("POST", f"{API}/v1/users/{bob['user_id']}/follow", None, ada["token"])
    mine = call("POST", f"{API}/v1/posts", {"text": "hello, I am ada"}, ada["token"])
    for text in ("first post from bob", "second post from bob"):
        call("POST", f"{API}/v1/posts", {"text": text}, bob["token"])
    call("POST", f"{API}/v1/posts/{mine['post_id']}/like", None, bob["token"])

    print(f"4. waiting up to {WAIT_SECONDS} s for the pushes (2 per device)", end="", flush=True)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        got = call("GET", f"{control}/received")
        apns = [p for p in got["apns"][skip["apns"] :] if p["token"] == token]
        fcm = [p for p in got["fcm"][skip["fcm"] :] if p["token"] == android]
        web = [
            p
            for p in got["webpush"][skip["webpush"] :]
            if p["endpoint"] == subscription["endpoint"]
        ]
        if (len(apns) >= 2 and len(fcm) >= 2 and len(web) >= 2) or time.monotonic() > deadline:
            break
        print(".", end="", flush=True)
        time.sleep(1)
    print()
    for push in apns:
        h = push["headers"]
        print(
            f"  APNs    {h.get('apns-push-type'):<10} priority {h.get('apns-priority')}"
            f"  collapse-id {h.get('apns-collapse-id', '-'):<5} {json.dumps(push['payload'])}"
        )
    for push in fcm:
        message = push["message"]
        android_options = message.get("android", {})
        notification = message.get("notification")
        shown = json.dumps(notification) if notification else "none (a data message)"
        print(
            f"  FCM     priority {android_options.get('priority', '-'):<6}"
            f" collapse_key {android_options.get('collapse_key', '-'):<5}"
            f" data {json.dumps(message.get('data'))}  notification {shown}"
        )
    for push in web:
        print(
            f"  WebPush urgency {push['urgency']:<5} topic {push['topic'] or '-':<5}"
            f" ttl {push['ttl']}  decrypted: {push.get('plaintext')}"
        )
    if len(apns) < 2 or len(fcm) < 2 or len(web) < 2:
        sys.exit("demo: not every push arrived; see the push worker's log lines")
    print("done: two posts became ONE silent feed push per device; the like became an alert.")


if __name__ == "__main__":
    main()
