"""Thin adapters from HTTP to the node: the SSE endpoint, and the WebSocket endpoint for
upgrades that reach aiohttp (a keep-alive connection aiohttp already owns, or every one
with GATEWAY_NATIVE_WEBSOCKET=false; otherwise fresh connections are upgraded by
gateway.protocols.entry without aiohttp). They parse the request, set up the transport
and hand everything else to GatewayNode."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import HttpVersion11, WSMsgType, web

from core.http_errors import error_body
from gateway.node import Admission, GatewayNode, Refused
from gateway.params import bearer_token, cors_headers, origin_allowed, parse_since
from gateway.protocols.connections import WebSocketConnections
from gateway.protocols.frames import MAX_CLIENT_MESSAGE
from gateway.transport import SSETransport, WebSocketTransport, cut_when_stuck, last_write

NODE = web.AppKey("gateway_node", GatewayNode)
WEBSOCKETS = web.AppKey("gateway_websockets", WebSocketConnections)


def _token(request: web.Request) -> str | None:
    return bearer_token(request.headers.get("Authorization"), request.query.get("access_token"))


def _origin_allowed(request: web.Request, node: GatewayNode) -> bool:
    return origin_allowed(request.headers.get("Origin"), node.settings.gateway_allowed_origins)


def _error(status: int, code: str, message: str, request: web.Request) -> web.Response:
    headers = cors_headers(request.headers.get("Origin"))
    if status in (429, 503):
        headers["Retry-After"] = "2"
    return web.Response(
        body=error_body(code, message),
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def websocket(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    if not _origin_allowed(request, node):
        return _error(403, "origin_not_allowed", "this origin may not connect", request)
    if request.version != HttpVersion11:  # RFC 6455 4.1: an upgrade is HTTP/1.1
        return _error(505, "http_version", "a WebSocket upgrade needs HTTP/1.1", request)
    ws = web.WebSocketResponse(
        heartbeat=node.settings.gateway_ping_seconds,
        max_msg_size=MAX_CLIENT_MESSAGE,
        compress=False,  # per-message deflate costs ~4x memory per connection
    )
    try:
        await ws.prepare(request)
    except web.HTTPException as exc:  # not a valid upgrade: aiohttp's words, our shape
        code = "upgrade_required" if exc.status == 426 else "bad_request"
        return _error(exc.status, code, exc.text or exc.reason, request)
    try:
        admission = node.admit(request.remote or "?", _token(request))
        since = parse_since(request.query.get("since"))
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
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                client.received(message.data if message.type is WSMsgType.TEXT else None)
            elif message.type is WSMsgType.ERROR:
                break
    finally:
        await node.disconnect(client)
        if request.transport is not None:  # aiohttp would wait to write the last frames
            cut_when_stuck(request.transport)
    return ws


async def sse(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    if not _origin_allowed(request, node):
        return _error(403, "origin_not_allowed", "this origin may not connect", request)
    if request.version != HttpVersion11:  # the stream is framed in HTTP/1.1 chunks
        return _error(505, "http_version", "the event stream needs HTTP/1.1", request)
    try:
        admission: Admission = node.admit(request.remote or "?", _token(request))
        since = parse_since(request.headers.get("Last-Event-ID") or request.query.get("since"))
    except Refused as refused:
        return _error(refused.status, refused.error, refused.message, request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **cors_headers(request.headers.get("Origin")),
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
        try:
            await response.prepare(request)
            # The first bytes go through aiohttp's own writer: it holds the headers back
            # until the first body chunk, and raw writes must never overtake them.
            await response.write(b"retry: 2000\n\n")
        except ConnectionError:  # the client left while it was being joined
            return response
        transport.started = True
        await node.catch_up(client, admission.token, since)
        while not transport.closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(transport.closed.wait(), ping)
            if transport.closed.is_set():
                break
            if request.transport is None or request.transport.is_closing():
                break  # the peer went away: dropped at the next keepalive at the latest
            transport.write_raw(b": keepalive\n\n")
    finally:
        await node.disconnect(client)
    await last_write(response.write_eof(), request.transport)
    return response
