"""Run the stand-ins in one process (the demo mode of the run command):

    python -m standins --dir .stack/standins [--control-port 8090]
        [--apns-port N] [--webpush-port N] [--fcm-port N] [--host 127.0.0.1]
        [--topic com.example.feed] [--fcm-project feed-standin]

Writes the CA, the APNs .p8 key and the FCM service-account key into --dir, prints the
settings a push worker needs (KEY=VALUE lines, also written to <dir>/standins.env) and
serves a plain-HTTP control API on 127.0.0.1:--control-port:

    GET  /received        what the stand-ins accepted and refused (JSON)
    POST /subscriptions   a new Web Push subscription; body {"application_server_key"?}
    POST /fcm/tokens      a new FCM registration token, as an Android app gets one
    POST /script          queue answers: {"kind": "apns", "token": ..., "answers":
                          [{"status", "reason"?, "retry_after"?}]}, {"kind": "webpush",
                          "endpoint": ..., "answers": [{"status", "retry_after"?}]} or
                          {"kind": "fcm", "token": ..., "answers": [{"error"?,
                          "retry_after"?}]} (error: an FCM errorCode; none: success)

The CA is new on every start: start the push worker after the stand-ins. Ctrl-C or
SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from standins.apns import ApnsAnswer, ApnsStandin
from standins.fcm import FcmAnswer, FcmStandin, registration_token
from standins.tls import LocalCA
from standins.webpush import WebPushAnswer, WebPushStandin

MAX_ANSWERS = 1000  # per script call: a demo control API, not a load generator


def _received_json(apns: ApnsStandin, webpush: WebPushStandin, fcm: FcmStandin) -> dict[str, Any]:
    pushes = []
    for item in webpush.received.items:
        entry = dataclasses.asdict(item)
        plaintext: bytes = entry.pop("plaintext")
        entry["plaintext_base64"] = base64.b64encode(plaintext).decode()
        with contextlib.suppress(UnicodeDecodeError):
            entry["plaintext"] = plaintext.decode()
        pushes.append(entry)
    return {
        "apns": [dataclasses.asdict(item) for item in apns.received.items],
        "apns_refused": [dataclasses.asdict(item) for item in apns.refused.items],
        "webpush": pushes,
        "webpush_refused": [dataclasses.asdict(item) for item in webpush.refused.items],
        "fcm": [dataclasses.asdict(item) for item in fcm.received.items],
        "fcm_refused": [dataclasses.asdict(item) for item in fcm.refused.items],
        "fcm_grants": len(fcm.grants),
    }


def _answers(body: dict[str, Any], kind: str) -> list[Any]:
    raw = body.get("answers")
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_ANSWERS:
        raise web.HTTPBadRequest(text=f"answers: a list of 1-{MAX_ANSWERS} objects")
    answers: list[Any] = []
    for item in raw:
        if kind == "fcm":
            answers.append(_fcm_answer(item))
            continue
        if not isinstance(item, dict) or not isinstance(item.get("status"), int):
            raise web.HTTPBadRequest(text="each answer needs an integer status")
        retry_after = item.get("retry_after")
        if retry_after is not None and not isinstance(retry_after, int | float):
            raise web.HTTPBadRequest(text="retry_after must be a number")
        if kind == "apns":
            answers.append(ApnsAnswer(item["status"], item.get("reason"), retry_after))
        else:
            answers.append(WebPushAnswer(item["status"], retry_after))
    return answers


def _fcm_answer(item: Any) -> FcmAnswer:
    if not isinstance(item, dict):
        raise web.HTTPBadRequest(text="each answer must be an object")
    error, retry_after = item.get("error"), item.get("retry_after")
    if retry_after is not None and not isinstance(retry_after, int | float):
        raise web.HTTPBadRequest(text="retry_after must be a number")
    try:
        return FcmAnswer(error, retry_after)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None


def control_app(apns: ApnsStandin, webpush: WebPushStandin, fcm: FcmStandin) -> web.Application:
    async def received(request: web.Request) -> web.Response:
        return web.json_response(_received_json(apns, webpush, fcm))

    async def fcm_tokens(request: web.Request) -> web.Response:
        return web.json_response({"token": registration_token()}, status=201)

    async def subscriptions(request: web.Request) -> web.Response:
        body = await _json(request)
        key = body.get("application_server_key")
        if key is not None and not isinstance(key, str):
            raise web.HTTPBadRequest(text="application_server_key must be a string")
        return web.json_response(webpush.create_subscription(key), status=201)

    async def script(request: web.Request) -> web.Response:
        body = await _json(request)
        kind = body.get("kind")
        target = body.get("endpoint" if kind == "webpush" else "token")
        if kind not in ("apns", "fcm", "webpush") or not isinstance(target, str):
            raise web.HTTPBadRequest(
                text='{"kind": "apns" or "fcm", "token"} or {"kind": "webpush", "endpoint"}'
            )
        answers = _answers(body, kind)
        if kind == "apns":
            apns.script(target, *answers)
        elif kind == "fcm":
            fcm.script(target, *answers)
        else:
            webpush.script(target, *answers)
        return web.json_response({"queued": len(answers)})

    app = web.Application(client_max_size=256 * 1024)
    app.router.add_get("/received", received)
    app.router.add_post("/subscriptions", subscriptions)
    app.router.add_post("/fcm/tokens", fcm_tokens)
    app.router.add_post("/script", script)
    return app


async def _json(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


async def serve(args: argparse.Namespace) -> None:
    directory, host = args.dir, args.host
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tls = LocalCA.create(directory)
    async with (
        ApnsStandin(tls, topic=args.topic, host=host, port=args.apns_port) as apns,
        WebPushStandin(tls, host=host, port=args.webpush_port) as webpush,
        FcmStandin(tls, project_id=args.fcm_project, host=host, port=args.fcm_port) as fcm,
    ):
        key_file = apns.write_key(directory / "apns-key.p8")
        fcm_key_file = fcm.write_credentials(directory / "fcm-service-account.json")
        runner = web.AppRunner(control_app(apns, webpush, fcm), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, args.control_port)
            await site.start()
            bound = runner.addresses[0][1]
            settings = {
                "APNS_URL": apns.url,
                "APNS_KEY_FILE": str(key_file.resolve()),
                "APNS_KEY_ID": apns.key_id,
                "APNS_TEAM_ID": apns.team_id,
                "APNS_TOPIC": apns.topic,
                "FCM_CREDENTIALS_FILE": str(fcm_key_file.resolve()),
                "FCM_URL": fcm.url,
                "PUSH_CA_FILE": str(tls.ca_file.resolve()),
                "PUSH_ALLOW_LOOPBACK": "true",
                "STANDINS_CONTROL_URL": f"http://{host}:{bound}",
                "STANDINS_WEBPUSH_URL": webpush.url,
            }
            lines = "".join(f"{name}={value}\n" for name, value in settings.items())
            (directory / "standins.env").write_text(lines)
            sys.stdout.write(lines)
            sys.stdout.flush()
            await stop.wait()
        finally:
            await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m standins", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--dir", required=True, type=Path, help="where the CA and keys go")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--control-port", type=int, default=0, help="0: any free port")
    parser.add_argument("--apns-port", type=int, default=0)
    parser.add_argument("--webpush-port", type=int, default=0)
    parser.add_argument("--fcm-port", type=int, default=0)
    parser.add_argument("--fcm-project", default="feed-standin", help="the Firebase project")
    parser.add_argument("--topic", default="com.example.feed", help="the accepted apns-topic")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        sys.exit(f"push stand-ins: {exc}")


if __name__ == "__main__":
    main()
