"""A thin client for the API under test (real server app on the real stack)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestClient, TestServer

Client = TestClient[web.Request, web.Application]
# pytest-aiohttp's `aiohttp_client` fixture as the tests call it: with an app, or with a
# TestServer around one (serve_api, serve_gateway). Either way the client's `.app` is that
# app, though the plugin's own overloads type a client made from a server as app-less.
MakeClient = Callable[[web.Application | TestServer], Awaitable[Client]]


@dataclass
class User:
    id: str
    handle: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def port_of(server: Client | BaseTestServer) -> int:
    """The port of a started test server (aiohttp types it optional: unset before start)."""
    port = server.port
    assert port is not None, "the test server is not started"
    return port


def new_handle(prefix: str = "u") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"[:15]


async def sign_up(
    client: Client, handle: str | None = None, password: str = "correct horse"
) -> User:
    handle = handle or new_handle()
    resp = await client.post("/v1/users", json={"handle": handle, "password": password})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    return User(body["user_id"], body["handle"], body["token"])


async def post(client: Client, user: User, text: str, **extra: Any) -> str:
    resp = await client.post("/v1/posts", json={"text": text, **extra}, headers=user.auth)
    assert resp.status == 201, await resp.text()
    post_id: str = (await resp.json())["post_id"]
    return post_id


async def follow(client: Client, follower: User, followee: User) -> None:
    resp = await client.post(f"/v1/users/{followee.id}/follow", headers=follower.auth)
    assert resp.status == 200, await resp.text()


async def error_of(resp: Any) -> dict[str, Any]:
    body = await resp.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    return error
