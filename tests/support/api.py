"""A thin client for the API under test (real server app on the real stack)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient


@dataclass
class User:
    id: str
    handle: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def new_handle(prefix: str = "u") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"[:15]


async def sign_up(
    client: TestClient, handle: str | None = None, password: str = "correct horse"
) -> User:
    handle = handle or new_handle()
    resp = await client.post("/v1/users", json={"handle": handle, "password": password})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    return User(body["user_id"], body["handle"], body["token"])


async def post(client: TestClient, user: User, text: str, **extra: Any) -> str:
    resp = await client.post("/v1/posts", json={"text": text, **extra}, headers=user.auth)
    assert resp.status == 201, await resp.text()
    post_id: str = (await resp.json())["post_id"]
    return post_id


async def follow(client: TestClient, follower: User, followee: User) -> None:
    resp = await client.post(f"/v1/users/{followee.id}/follow", headers=follower.auth)
    assert resp.status == 200, await resp.text()


async def error_of(resp: Any) -> dict[str, Any]:
    body = await resp.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    return error
