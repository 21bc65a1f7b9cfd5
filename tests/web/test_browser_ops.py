"""The ops dashboard in real Chromium against real server, gateway and fan-out processes:
it asks for the operator token, then follows a real browser WebSocket coming and going,
shows ranked feed pages, a fallback with its cause when the model file goes away and the
ranker's latency, and marks a gateway node that stopped reporting as down."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import expect

from core.settings import Settings
from ranking.model import SHIPPED_MODEL
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


async def keep_reading_feed(
    http: aiohttp.ClientSession, api_url: str, reader: str, algorithm: str | None
) -> None:
    """Reads the feed every half second; a ranked reader also reads the second page (from
    the first page's snapshot), so both kinds of ranked page are counted."""
    params = {"algorithm": algorithm, "limit": "2"} if algorithm else {}
    while True:
        async with http.get(f"{api_url}/v1/feed", params=params, headers=auth(reader)) as resp:
            assert resp.status == 200
            cursor = (await resp.json()).get("next_cursor")
        if algorithm and cursor:
            later = params | {"cursor": cursor}
            async with http.get(f"{api_url}/v1/feed", params=later, headers=auth(reader)) as resp:
                assert resp.status == 200
        await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def reading(
    http: aiohttp.ClientSession, api_url: str, reader: str, algorithm: str | None = None
) -> AsyncIterator[None]:
    """A reader keeps reading while the dashboard is checked: its figures cover the last
    seconds only (the latency windows are 10 s, rates the last second), so reads made
    before a check may have aged out by the time the page shows them (this flaked in CI).
    """
    task = asyncio.create_task(keep_reading_feed(http, api_url, reader, algorithm))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.slow
async def test_dashboard_follows_a_browser_connection(settings: Settings) -> None:
    # The server ranks with a copy of the shipped model: removing the copy later forces
    # a fallback (no model) in the real process, as losing the file would in production.
    with tempfile.TemporaryDirectory(prefix="ops-model-") as tmp:
        model = Path(tmp) / "model.json"
        shutil.copyfile(SHIPPED_MODEL, model)
        await follow_the_system(settings, model)


async def follow_the_system(settings: Settings, model: Path) -> None:
    host = socket.gethostname()
    ranking = {"RANKING_MODEL_PATH": str(model), "RANKING_BUDGET_MS": "5000"}
    async with (
        running_system(settings, **ranking) as system,
        chromium() as browser,
        contextlib.AsyncExitStack() as stack,
    ):
        gateway = system.services["gateway"]
        gateway_node = f"{host}:gateway:{gateway.port}:{gateway.proc.pid}"
        fanout_node = f"{host}:fanout:{system.services['fanout'].port}"
        server = system.services["server"]
        server_node = f"{host}:server:{server.port}:{server.proc.pid}"
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
        # out while fan-out caught up, so a reader keeps reading until the page shows it.
        async with reading(http, system.api_url, reader):
            # This run's server: a node of an earlier test may still be listed, down.
            server_row = page.locator("#server-table tbody tr", has_text=server_node)
            await expect(server_row.locator("td").nth(2)).not_to_have_text(
                "\u2013", timeout=TIMEOUT_MS
            )
        await expect(gateway_row.locator("td").nth(4)).not_to_have_text("\u2013")  # a rate
        # The Redis behind the server: here one node, up, holding this run's keys.
        redis_node = settings.redis_url.split("@")[-1].split("//")[-1].split("/")[0]
        redis_row = page.locator("#redis-table tbody tr", has_text=redis_node)
        await expect(page.locator("#redis-mode")).to_have_text("(single node)")
        await expect(redis_row.locator("td").nth(0)).to_have_text("up")
        await expect(redis_row.locator("td").nth(1)).to_have_text("all")
        await expect(redis_row.locator("td").nth(2)).to_have_text(re.compile(r"^[1-9]"))

        # Ranked pages: first pages ranked now and later pages from their snapshot are
        # counted, and the ranker's p50/p99 shown; no fallback yet.
        ranked_rows = page.locator("#ranked-table tbody tr")
        count = 1  # the columns after the row header: why, count, per second
        first_pages = ranked_rows.filter(has_text="first page").locator("td").nth(count)
        later_pages = ranked_rows.filter(has_text="later page").locator("td").nth(count)
        no_model = page.locator('#ranked-table tbody tr[data-cause="no_model"]')
        nonzero = re.compile(r"^[1-9]")
        async with reading(http, system.api_url, reader, "ranked"):
            await expect(first_pages).to_have_text(nonzero, timeout=TIMEOUT_MS)
            await expect(later_pages).to_have_text(nonzero, timeout=TIMEOUT_MS)
            await expect(page.locator("#ranker-p50")).to_have_text(
                re.compile(r"^\d[\d.,]* ms$"), timeout=TIMEOUT_MS
            )
            await expect(page.locator("#ranker-p99")).to_have_text(re.compile(r" ms$"))
            await expect(page.locator("#ranked-rate")).not_to_have_text("\u2013")
            await expect(no_model.locator("td").nth(count)).to_have_text("0")
            await expect(page.locator("#ranked-fallback-share")).to_have_text("0.0 %")
            ranker_chart = page.locator('[data-chart="ranker-latency"] canvas')
            await expect(ranker_chart).to_have_attribute(
                "aria-label", re.compile(r"p50 \d[\d.,]* ms")
            )

            # The model file goes away: ranked requests are served chronologically, and
            # the dashboard says so and why.
            await asyncio.to_thread(model.unlink)
            await expect(no_model.locator("td").nth(count)).to_have_text(
                nonzero, timeout=TIMEOUT_MS
            )
            await expect(no_model).to_have_class("fallback-seen")
            await expect(no_model.locator("td").first).to_have_text("no model loaded")
            await expect(page.locator("#ranked-fallback-share")).not_to_have_text(
                re.compile(r"^(0\.0 %|\u2013)$"), timeout=TIMEOUT_MS
            )

            # Back again: ranked first pages resume (the screenshot shows both).
            ranked_so_far = await first_pages.text_content() or ""
            await asyncio.to_thread(shutil.copyfile, SHIPPED_MODEL, model)
            await expect(first_pages).not_to_have_text(ranked_so_far, timeout=TIMEOUT_MS)
            await expect(page.locator("#ranker-p50")).to_have_text(re.compile(r" ms$"))
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
        # At least that one; exactly the rows listed as down (any other test's node that
        # stopped reporting while the page was open is down too, and rightly counted).
        await expect(page.locator("#total-nodes-down")).to_have_text(re.compile(r"^[1-9]"))
        down = await page.evaluate(
            "[document.querySelectorAll('tbody td.down').length, "
            "document.querySelector('#total-nodes-down').textContent]"
        )
        assert str(down[0]) == down[1], down
        await ops_context.close()
