"""The ops dashboard in real Chromium against real server, gateway and fan-out processes:
it asks for the operator token, then follows a real browser WebSocket coming and going,
and marks a gateway node that stopped reporting as down."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import uuid

import aiohttp
import pytest
from playwright.async_api import expect

from core.settings import Settings
from tests.support.ops import WAIT, open_websocket
from tests.support.system import ARTIFACTS, chromium, publish_screenshot, running_system

SCREENSHOT = ARTIFACTS / "screenshots" / "ops.png"
TIMEOUT_MS = WAIT * 1000
POSTS = 8


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def sign_up_over_http(http: aiohttp.ClientSession, api_url: str) -> tuple[str, str]:
    body = {"handle": f"ops_{uuid.uuid4().hex[:10]}", "password": "correct horse"}
    async with http.post(f"{api_url}/v1/users", json=body) as resp:
        assert resp.status == 201, await resp.text()
        user = await resp.json()
    return user["user_id"], user["token"]


@pytest.mark.slow
async def keep_reading_feed(http: aiohttp.ClientSession, api_url: str, reader: str) -> None:
    while True:
        async with http.get(f"{api_url}/v1/feed", headers=auth(reader)) as resp:
            assert resp.status == 200
        await asyncio.sleep(0.5)


async def test_dashboard_follows_a_browser_connection(settings: Settings) -> None:
    host = socket.gethostname()
    async with (
        running_system(settings) as system,
        chromium() as browser,
        contextlib.AsyncExitStack() as stack,
    ):
        gateway = system.services["gateway"]
        gateway_node = f"{host}:gateway:{gateway.port}:{gateway.proc.pid}"
        fanout_node = f"{host}:fanout:{system.services['fanout'].port}"
        http = await stack.enter_async_context(aiohttp.ClientSession())
        _, reader = await sign_up_over_http(http, system.api_url)
        author_id, author = await sign_up_over_http(http, system.api_url)
        async with http.post(
            f"{system.api_url}/v1/users/{author_id}/follow", headers=auth(reader)
        ) as resp:
            assert resp.status == 200

        ops_context = await browser.new_context(viewport={"width": 1280, "height": 1500})
        page = await ops_context.new_page()
        await page.goto(f"{system.api_url}/ops")

        # It asks for the token; a wrong one is refused and asked for again.
        token_field = page.get_by_label("Operator token")
        await expect(token_field).to_be_visible()
        await token_field.fill("not-the-token")
        await page.get_by_role("button", name="Open dashboard").click()
        await expect(page.locator("#login-error")).to_contain_text("refused", timeout=TIMEOUT_MS)
        await token_field.fill(settings.operator_token)
        await page.get_by_role("button", name="Open dashboard").click()

        await expect(page.locator("#status")).to_have_text("Live", timeout=TIMEOUT_MS)
        gateway_row = page.locator("#gateway-table tbody tr", has_text=gateway_node)
        await expect(gateway_row).to_contain_text("up", timeout=TIMEOUT_MS)
        await expect(page.locator("#total-connections")).to_have_text("0", timeout=TIMEOUT_MS)

        # Another browser opens a real WebSocket to the gateway: the count goes up ...
        user_context = await browser.new_context()
        await open_websocket(user_context, system.gateway_url, reader)
        await expect(page.locator("#total-connections")).to_have_text("1", timeout=TIMEOUT_MS)
        await expect(page.locator("#total-users")).to_have_text("1", timeout=TIMEOUT_MS)
        await expect(gateway_row.locator("td").nth(1)).to_have_text("1")  # WebSocket column
        canvas = page.locator('[data-chart="connections"] canvas')
        await expect(canvas).to_have_attribute("aria-label", re.compile(r"WebSocket 1\b"))

        # Some traffic, so the screenshot's charts and tables have something to show.
        fanout_row = page.locator("#fanout-table tbody tr", has_text=fanout_node)
        await expect(fanout_row.locator("td").nth(2)).to_have_text(
            re.compile(r"^[1-9]"), timeout=TIMEOUT_MS
        )  # fan-out holds its partitions (it starts at the newest events)
        for i in range(POSTS):
            async with http.post(
                f"{system.api_url}/v1/posts", json={"text": f"hello ops {i}"}, headers=auth(author)
            ) as resp:
                assert resp.status == 201, await resp.text()
            async with http.get(f"{system.api_url}/v1/feed", headers=auth(reader)) as resp:
                assert resp.status == 200
            await asyncio.sleep(0.5)  # spread over a few seconds: the charts have a shape
        await expect(fanout_row.locator("td").nth(4)).to_have_text(str(POSTS), timeout=TIMEOUT_MS)
        # The feed read p50 covers the last 10 s of reads: the reads above may have aged
        # out while fan-out caught up (this flaked in CI), so a reader keeps reading until
        # the dashboard shows it.
        reading = asyncio.create_task(keep_reading_feed(http, system.api_url, reader))
        try:
            server_row = page.locator("#server-table tbody tr")
            await expect(server_row.locator("td").nth(2)).not_to_have_text(
                "\u2013", timeout=TIMEOUT_MS
            )
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        await expect(gateway_row.locator("td").nth(4)).not_to_have_text("\u2013")  # a rate
        assert await page.evaluate("sessionStorage.getItem('feed.ops.token')") == (
            settings.operator_token
        )

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT), full_page=True)
        publish_screenshot(SCREENSHOT, "ops.png")

        # ... and down when that browser goes away.
        await user_context.close()
        await expect(page.locator("#total-connections")).to_have_text("0", timeout=TIMEOUT_MS)

        # A node that stops reporting stays listed, marked down.
        gateway.stop()
        await expect(gateway_row.locator("td").first).to_contain_text("down", timeout=TIMEOUT_MS)
        await expect(page.locator("#total-nodes-down")).to_have_text("1")
        await ops_context.close()
