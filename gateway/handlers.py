"""Thin adapters from HTTP to the node: the WebSocket and SSE endpoints. They parse the
request, set up the transport and hand everything else to GatewayNode."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiohttp import WSMsgType, web

from gateway.codes import Close
from gateway.node import Admission, GatewayNode, Refused
from gateway.outgoing import control
from gateway.transport import SSETransport, WebSocketTransport

NODE = web.AppKey("gateway_node", GatewayNode)
MAX_CLIENT_MESSAGE = 4096
MAX_ID = 2**63 - 1


def _token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.query.get("access_token") or None


def _since(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not 0 < int(raw) <= MAX_ID:
        raise Refused(Close.POLICY, 400, "invalid_since", "since must be a post id")
    return int(raw)


def _origin_allowed(request: web.Request, node: GatewayNode) -> bool:
    allowed = node.settings.gateway_allowed_origins
    origin = request.headers.get("Origin")
    if allowed.strip() == "*" or origin is None:
        return True
    return origin in {o.strip() for o in allowed.split(",")}


def _cors(request: web.Request) -> dict[str, str]:
    origin = request.headers.get("Origin")
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin else {}


def _error(status: int, code: str, message: str, request: web.Request) -> web.Response:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    headers = _cors(request)
    if status in (429, 503):
        headers["Retry-After"] = "2"
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


async def websocket(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    if not _origin_allowed(request, node):
        return _error(403, "origin_not_allowed", "this origin may not connect", request)
    ws = web.WebSocketResponse(
        heartbeat=node.settings.gateway_ping_seconds,
        max_msg_size=MAX_CLIENT_MESSAGE,
        compress=False,  # per-message deflate costs ~4x memory per connection
    )
    await ws.prepare(request)
    try:
        admission = node.admit(request.remote or "?", _token(request))
        since = _since(request.query.get("since"))
    except Refused as refused:
        # Browsers cannot read an HTTP status from a failed upgrade; a close code they can.
        await ws.close(code=refused.code, message=refused.message.encode())
        return ws
    assert request.transport is not None
    client = node.new_client(admission.user_id, WebSocketTransport(ws, request.transport))
    try:
        await node.connect(client, admission.token, since)
    except Refused as refused:
        client.close(refused.code, refused.message)  # closed (bounded) by disconnect()
    try:
        async for message in ws:
            if message.type is WSMsgType.TEXT and message.data.strip() == '{"type":"ping"}':
                client.send_now([control("pong")])
            elif message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                client.close(Close.POLICY, 'clients may only send {"type":"ping"}')
            elif message.type is WSMsgType.ERROR:
                break
    finally:
        await node.disconnect(client)
    return ws


async def sse(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    if not _origin_allowed(request, node):
        return _error(403, "origin_not_allowed", "this origin may not connect", request)
    try:
        admission: Admission = node.admit(request.remote or "?", _token(request))
        since = _since(request.headers.get("Last-Event-ID") or request.query.get("since"))
    except Refused as refused:
        return _error(refused.status, refused.error, refused.message, request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **_cors(request),
        }
    )
    assert request.transport is not None
    transport = SSETransport(response, request.transport)
    client = node.new_client(admission.user_id, transport)
    ping = node.settings.gateway_ping_seconds
    try:
        # Joined before the response starts, so a node that cannot serve answers 503.
        # Live events meanwhile are held by the client until the catch-up.
        try:
            await node.join(client)
        except Refused as refused:
            return _error(refused.status, refused.error, refused.message, request)
        response.enable_chunked_encoding()
        await response.prepare(request)
        # The first bytes go through aiohttp's own writer: it holds the headers back until
        # the first body chunk, and raw writes must never overtake them.
        await response.write(b"retry: 2000\n\n")
        transport.started = True
        await node.catch_up(client, admission.token, since)
        while not transport.closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(transport.closed.wait(), ping)
            if request.transport is None or request.transport.is_closing():
                break  # the peer went away: dropped at the next keepalive at the latest
            transport.write_raw(b": keepalive\n\n")
    finally:
        await node.disconnect(client)
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.write_eof()
    return response
