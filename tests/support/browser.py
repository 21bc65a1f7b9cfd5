"""Driving the web client in Chromium the way a person does (forms, buttons), plus a small
API client for the other side of a conversation and screenshot saving."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from playwright.async_api import Browser, BrowserContext, Locator, Page, expect

from core.settings import Settings
from tests.support.api import User, new_handle
from tests.support.env import free_port
from tests.support.system import ARTIFACTS, System, publish_screenshot, running_system

SCREENSHOTS = ARTIFACTS / "screenshots"
PASSWORD = "correct horse battery"


@dataclass
class Api:
    """The HTTP API of a running system, for what the test does outside the browser."""

    session: aiohttp.ClientSession
    base: str

    async def sign_up(self, prefix: str = "u") -> User:
        handle = new_handle(prefix)
        async with self.session.post(
            f"{self.base}/v1/users", json={"handle": handle, "password": PASSWORD}
        ) as resp:
            assert resp.status == 201, await resp.text()
            body = await resp.json()
        return User(body["user_id"], body["handle"], body["token"])

    async def post(self, user: User, text: str) -> str:
        async with self.session.post(
            f"{self.base}/v1/posts", json={"text": text}, headers=user.auth
        ) as resp:
            assert resp.status == 201, await resp.text()
            post_id: str = (await resp.json())["post_id"]
        return post_id

    async def feed_size(self, user: User) -> int:
        async with self.session.get(
            f"{self.base}/v1/feed", params={"limit": "100"}, headers=user.auth
        ) as resp:
            assert resp.status == 200, await resp.text()
            return len((await resp.json())["posts"])

    async def follow(self, follower: User, followee: User) -> None:
        async with self.session.post(
            f"{self.base}/v1/users/{followee.id}/follow", headers=follower.auth
        ) as resp:
            assert resp.status == 200, await resp.text()


async def sign_up(page: Page, handle: str, display_name: str = "") -> None:
    form = page.locator("#sign-up")
    await form.get_by_label("Handle").fill(handle)
    if display_name:
        await form.get_by_label("Display name").fill(display_name)
    await form.get_by_label("Password").fill(PASSWORD)
    await form.get_by_role("button", name="Sign up").click()
    await expect(page.locator("body")).to_have_attribute("data-signed-in", "true")


async def sign_in(page: Page, handle: str, password: str = PASSWORD) -> None:
    form = page.locator("#sign-in")
    await form.get_by_label("Handle").fill(handle)
    await form.get_by_label("Password").fill(password)
    await form.get_by_role("button", name="Sign in").click()


async def expect_live(page: Page, transport: str = "websocket") -> None:
    body = page.locator("body")
    await expect(body).to_have_attribute("data-connection", "live")
    await expect(body).to_have_attribute("data-transport", transport)
    await expect(page.locator("#conn-state")).to_have_text("Live")


def feed_post(page: Page, text: str) -> Locator:
    return page.locator("#feed > li").filter(has_text=text)


async def feed_texts(page: Page) -> list[str]:
    texts: list[str] = await page.locator("#feed > li .text").all_inner_texts()
    return texts


async def screenshot(page: Page, name: str, *, for_readme: bool = False) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=path)
    if for_readme:
        publish_screenshot(path, "client.png")
    return path


@asynccontextmanager
async def client_system(settings: Settings) -> AsyncIterator[System]:
    """Server, gateway and fan-out for the web client, as in production: the server tells
    the page where the gateway is (PUBLIC_STREAM_URL), and the gateway accepts live
    connections from the page's origin only."""
    gateway_port = free_port()
    configured = dataclasses.replace(settings, public_stream_url=f"http://127.0.0.1:{gateway_port}")
    async with running_system(configured, services=("server",)) as system:
        system.settings = dataclasses.replace(
            system.settings, gateway_allowed_origins=system.api_url
        )
        system.start("gateway", port=gateway_port)
        system.start("fanout")
        yield system


@asynccontextmanager
async def opened(
    browser: Browser, system: System, *, init_script: str = "", **options: object
) -> AsyncIterator[tuple[BrowserContext, Page]]:
    """A fresh browser context (its own localStorage) on the client's page; fails the
    test on any uncaught script error."""
    context = await browser.new_context(**options)  # type: ignore[arg-type]
    if init_script:
        await context.add_init_script(init_script)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(system.api_url + "/")
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    try:
        yield context, page
    finally:
        await context.close()
    assert errors == []
