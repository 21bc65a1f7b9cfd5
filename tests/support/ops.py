"""Helpers for the ops dashboard tests: reading /v1/ops/stats as an operator, waiting for
a node's numbers to change, and opening a real WebSocket from a browser page."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from playwright.async_api import BrowserContext, Page

from core.settings import Settings

WAIT = 30.0  # a bound on eventual consistency, never an assertion about speed

Stats = dict[str, Any]


def operator_auth(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.operator_token}"}


async def ops_stats(session: aiohttp.ClientSession, api_url: str, settings: Settings) -> Stats:
    async with session.get(f"{api_url}/v1/ops/stats", headers=operator_auth(settings)) as resp:
        assert resp.status == 200, await resp.text()
        body: Stats = await resp.json()
        return body


async def wait_for_stats(
    session: aiohttp.ClientSession,
    api_url: str,
    settings: Settings,
    check: Callable[[Stats], bool],
    what: str,
    timeout: float = WAIT,
) -> Stats:
    """Polls /v1/ops/stats until `check` holds; fails with the last answer otherwise."""
    deadline = time.monotonic() + timeout
    body: Stats = {}
    while time.monotonic() < deadline:
        body = await ops_stats(session, api_url, settings)
        if check(body):
            return body
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what}: not seen in {timeout:.0f} s; last stats: {body}")


def node(stats: Stats, service: str, name: str) -> dict[str, Any] | None:
    return next((n for n in stats["services"][service] if n["node"] == name), None)


async def open_websocket(context: BrowserContext, gateway_url: str, token: str) -> Page:
    """A blank page holding a real browser WebSocket to the gateway (as the web client
    would), resolved once the connection is open."""
    page = await context.new_page()
    stream = gateway_url.replace("http://", "ws://") + "/v1/stream?access_token=" + token
    opened = await page.evaluate(
        """(url) => new Promise((resolve) => {
            const ws = new WebSocket(url);
            window.feedSocket = ws;
            ws.onopen = () => resolve("open");
            ws.onclose = (e) => resolve("closed " + e.code);
        })""",
        stream,
    )
    assert opened == "open", opened
    return page
