"""The ranked home feed in the web client (issue 26), in a real Chromium against real
server, gateway and fan-out processes: the "For you" and "Following" tabs ask for their
algorithm, the choice survives a reload, a ranked post says why it is there, a live post
still lands on top, and a ranked request served chronologically is noted, not an error."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any
from urllib.parse import parse_qs, urlparse

import aiohttp
import pytest
from playwright.async_api import Browser, Page, Request, expect

from core.settings import Settings
from tests.support.api import User
from tests.support.browser import (
    Api,
    expect_live,
    feed_post,
    feed_texts,
    opened,
    screenshot,
    sign_in,
)
from tests.support.system import System, running_system
from tests.support.wait import eventually

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

expect.set_options(timeout=15_000)


@pytest.fixture(scope="module")
def client_settings(settings: Settings) -> Settings:
    # A generous ranking budget: on this noisy machine the default 50 ms can be missed,
    # and a page served chronologically would hide the reasons this test is about.
    return dataclasses.replace(settings, ranking_budget_ms=5000)


async def like(api: Api, user: User, post_id: str) -> None:
    async with api.session.post(f"{api.base}/v1/posts/{post_id}/like", headers=user.auth) as resp:
        assert resp.status == 200, await resp.text()


async def ranked_page(api: Api, user: User) -> dict[str, Any]:
    async with api.session.get(
        f"{api.base}/v1/feed", params={"algorithm": "ranked"}, headers=user.auth
    ) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
    return body


def feed_requests(page: Page) -> list[dict[str, list[str]]]:
    """The query of every GET /v1/feed the page makes, in order."""
    seen: list[dict[str, list[str]]] = []

    def record(request: Request) -> None:
        url = urlparse(request.url)
        if url.path == "/v1/feed":
            seen.append(parse_qs(url.query))

    page.on("request", record)
    return seen


async def test_tabs_ask_for_their_algorithm_remember_it_and_show_reasons(
    system: System, browser: Browser, api: Api
) -> None:
    reader, author, friend = [await api.sign_up(p) for p in ("reader", "author", "friend")]
    await api.follow(reader, author)
    await api.follow(reader, friend)
    word = uuid.uuid4().hex[:8]
    liked_text = f"liked by a friend {word}"
    liked = await api.post(author, liked_text)
    await like(api, friend, liked)
    await api.post(author, f"newer, liked by nobody {word}")
    reason = f"liked by @{friend.handle}, whom you follow"

    # The like reaches the ranking feature store through Kafka and fan-out: wait until
    # the shipped model's ranked page gives that reason, as the page will then show it.
    async def reason_known() -> bool:
        body = await ranked_page(api, reader)
        return body["algorithm"] == "ranked" and any(
            p["id"] == liked and p.get("reason") == reason for p in body["posts"]
        )

    await eventually(reason_known, what="the friend's like in the ranked feed's reasons")

    async with opened(browser, system) as (_, page):
        requests = feed_requests(page)
        await sign_in(page, reader.handle)
        await expect_live(page)
        following = page.get_by_role("tab", name="Following")
        for_you = page.get_by_role("tab", name="For you")
        # Chronological is the default, asked for without naming an algorithm.
        await expect(following).to_have_attribute("aria-selected", "true")
        await expect(feed_post(page, liked_text)).to_have_count(1)
        assert requests and all(q.get("algorithm") in (None, ["chronological"]) for q in requests)
        await expect(page.locator("#feed .reason")).to_have_count(0)

        await for_you.click()
        await expect(for_you).to_have_attribute("aria-selected", "true")
        await expect(feed_post(page, liked_text).locator(".reason")).to_have_text(reason)
        assert requests[-1].get("algorithm") == ["ranked"]
        await expect(page.locator("#feed-note")).to_be_hidden()

        # A live post goes on top of the ranked feed, as it does chronologically.
        live = f"live while ranked {word}"
        await api.post(author, live)
        await expect(feed_post(page, live)).to_have_count(1)
        assert (await feed_texts(page))[0] == live
        await screenshot(page, "client-ranked")

        # The choice survives a reload: the first feed request is ranked again.
        requests.clear()
        await page.reload()
        await expect(page.locator("body")).to_have_attribute("data-ready", "true")
        await expect(for_you).to_have_attribute("aria-selected", "true")
        await expect(feed_post(page, liked_text).locator(".reason")).to_have_text(reason)
        assert requests and all(q.get("algorithm") == ["ranked"] for q in requests)

        # And back: chronological again, without reasons.
        await following.click()
        await expect(following).to_have_attribute("aria-selected", "true")
        await expect(feed_post(page, liked_text)).to_have_count(1)
        await expect(page.locator("#feed .reason")).to_have_count(0)
        assert requests[-1].get("algorithm") is None
        stored = await page.evaluate(f"localStorage.getItem('feed.algorithm.{reader.id}')")
        assert stored == "chronological"


async def test_a_ranked_request_served_chronologically_is_noted_not_an_error(
    settings: Settings, browser: Browser
) -> None:
    """A server without a model answers ranked requests chronologically and says so."""
    no_model = dataclasses.replace(settings, ranking_model_path="/nonexistent/model.json")
    async with (
        running_system(no_model, services=("server",)) as system,
        aiohttp.ClientSession() as session,
    ):
        api = Api(session, system.api_url)
        me = await api.sign_up("nomodel")
        text = f"my own post {uuid.uuid4().hex[:8]}"
        await api.post(me, text)
        async with opened(browser, system) as (_, page):
            requests = feed_requests(page)
            await sign_in(page, me.handle)
            await expect(feed_post(page, text)).to_have_count(1)
            await page.get_by_role("tab", name="For you").click()
            note = page.locator("#feed-note")
            await expect(note).to_have_text(
                "Showing the latest posts from people you follow: "
                "\u201cFor you\u201d is not available right now."
            )
            assert requests[-1].get("algorithm") == ["ranked"]
            await expect(feed_post(page, text)).to_have_count(1)
            await expect(page.locator("#feed .reason")).to_have_count(0)
            await expect(page.locator("#flash")).to_be_hidden()
            # Back on "Following" the note goes: nothing was wrong there.
            await page.get_by_role("tab", name="Following").click()
            await expect(note).to_be_hidden()


async def test_for_you_pages_by_the_ranked_cursor_without_duplicates(
    system: System, browser: Browser, api: Api
) -> None:
    reader = await api.sign_up("reader")
    authors = [await api.sign_up("author") for _ in range(3)]
    for author in authors:
        await api.follow(reader, author)
    word = uuid.uuid4().hex[:8]
    texts = [f"ranked page test {n} {word}" for n in range(25)]
    for n, text in enumerate(texts):
        await api.post(authors[n % 3], text)

    async def all_in_feed() -> bool:
        return await api.feed_size(reader) == 25

    await eventually(all_in_feed, what="25 posts in the feed")
    remember = f"localStorage.setItem('feed.algorithm.{reader.id}', 'ranked');"
    async with opened(browser, system, init_script=remember) as (_, page):
        requests = feed_requests(page)
        await sign_in(page, reader.handle)
        await expect(page.get_by_role("tab", name="For you")).to_have_attribute(
            "aria-selected", "true"
        )
        await expect(page.locator("#feed > li")).to_have_count(20)  # the first ranked page
        first_page = await feed_texts(page)
        await page.locator("#feed-sentinel").scroll_into_view_if_needed()
        await expect(page.locator("#feed > li")).to_have_count(25)
        await expect(page.locator("#feed-end")).to_have_text("You're all caught up.")
        shown = await feed_texts(page)
        # The second page went after the first, in the server's order, each post once.
        assert shown[:20] == first_page
        assert sorted(shown) == sorted(texts)
        assert requests[-1].get("algorithm") == ["ranked"] and requests[-1].get("cursor")
        await expect(page.locator("#feed-note")).to_be_hidden()
