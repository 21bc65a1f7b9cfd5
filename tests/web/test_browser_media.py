"""Images in the web client (issue 25), in a real Chromium against real server (with its
media worker), gateway, fan-out and the local S3 store: a person attaches a PNG, sees it
upload and get processed, gives it alt text and posts; a follower with the page open sees
it live, loaded from the store, with its alt text, and opens the larger view; an upload
that is not an image shows the server's reason and blocks posting until removed."""

from __future__ import annotations

import base64
import io
import uuid
from typing import Any

import pytest
from PIL import Image, ImageDraw
from playwright.async_api import Browser, FilePayload, Page, expect

from tests.support.api import User
from tests.support.browser import (
    Api,
    expect_live,
    feed_post,
    opened,
    screenshot,
    sign_in,
)
from tests.support.system import System, publish_screenshot

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

LIVE = 1000  # ms: a post reaches a follower's open page within a second
expect.set_options(timeout=20_000)  # processing waits for the media worker's next look

# Records every value an attachment's data-state takes, and whether the post button was
# enabled then: a MutationObserver sees each change, so no intermediate state is missed
# however quickly the upload goes.
RECORD_STATES = """() => {
  window.attachmentStates = [];
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.attributeName !== "data-state") continue;
      const submit = document.getElementById("compose-submit");
      window.attachmentStates.push([r.target.dataset.state, submit.disabled]);
    }
  }).observe(document.getElementById("attachments"), {
    subtree: true, attributes: true, attributeFilter: ["data-state"],
  });
}"""


def harbour_png(size: tuple[int, int] = (800, 500)) -> bytes:
    """A real PNG with some structure (sky, sea, a sun), so the blurhash and the
    screenshot show something."""
    image = Image.new("RGB", size, (120, 180, 230))
    draw = ImageDraw.Draw(image)
    width, height = size
    for y in range(height // 2, height):
        shade = int(160 - 100 * (y - height / 2) / (height / 2))
        draw.line([(0, y), (width, y)], fill=(20, 60 + shade // 2, 100 + shade))
    draw.ellipse([width * 0.65, height * 0.12, width * 0.8, height * 0.36], fill=(255, 200, 60))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


async def attach(page: Page, file: FilePayload) -> None:
    """Through the "Add images" button and the file chooser, as a person does."""
    async with page.expect_file_chooser() as chooser:
        await page.get_by_role("button", name="Add images").click()
    await (await chooser.value).set_files(file)


async def newest_post(api: Api, user: User) -> dict[str, Any]:
    async with api.session.get(f"{api.base}/v1/feed", headers=user.auth) as resp:
        assert resp.status == 200, await resp.text()
        post: dict[str, Any] = (await resp.json())["posts"][0]
    return post


async def test_an_image_with_alt_text_reaches_a_follower_live(
    system: System, browser: Browser, api: Api
) -> None:
    author, follower = await api.sign_up("pics"), await api.sign_up("viewer")
    await api.follow(follower, author)
    text = f"the harbour this morning {uuid.uuid4().hex[:8]}"
    alt = "A calm harbour under a blue sky, the sun low on the right."
    async with (
        opened(browser, system) as (_, page_a),
        opened(browser, system, viewport={"width": 900, "height": 1000}) as (_, page_b),
    ):
        await sign_in(page_a, author.handle)
        await sign_in(page_b, follower.handle)
        await expect_live(page_b)

        await page_a.get_by_label("What's happening?").fill(text)
        await page_a.evaluate(RECORD_STATES)
        png = harbour_png()
        await attach(page_a, {"name": "harbour.png", "mimeType": "image/png", "buffer": png})
        item = page_a.locator("#attachments > li")
        await expect(item).to_have_attribute("data-state", "ready")
        await expect(item.locator(".att-status")).to_have_text("Ready")
        # It went through every step, and the post button waited for the last one.
        states = await page_a.evaluate("window.attachmentStates")
        assert [s for s, _ in states] == ["processing", "ready"], states
        assert states == [["processing", True], ["ready", False]]
        # The PUT's upload progress events were followed to the end.
        assert await item.locator("progress").evaluate("p => p.value") == 100
        thumb = item.locator("img.thumb")
        assert await thumb.evaluate("img => img.complete && img.naturalWidth") == 800

        await page_a.get_by_label("Alt text for harbour.png").fill(alt)
        await screenshot(page_a, "media-compose")
        await page_a.get_by_role("button", name="Post").click()
        await expect(feed_post(page_a, text)).to_have_count(1)  # acknowledged (201)
        await expect(page_a.locator("#attachments")).to_be_hidden()

        # The follower sees it live: the preview from the store, its alt text as alt.
        post_b = feed_post(page_b, text)
        await expect(post_b).to_have_count(1, timeout=LIVE)
        image = post_b.locator(".media-grid img")
        await expect(image).to_have_attribute("alt", alt)
        await expect(image).to_have_attribute("loading", "lazy")
        await expect(post_b.locator(".tile")).to_have_class("tile loaded")
        assert await image.evaluate("img => img.naturalWidth") > 0
        await expect(post_b.locator(".tile canvas.blur")).to_have_count(1)  # the blurhash
        post = await newest_post(api, author)
        assert post["text"] == text and len(post["media"]) == 1
        media = post["media"][0]
        assert media["alt_text"] == alt and (media["width"], media["height"]) == (800, 500)
        assert await image.get_attribute("src") == media["preview_url"]
        path = await screenshot(page_b, "media")
        publish_screenshot(path, "media.png")

        # A click opens the full image in a dialog; Escape closes it.
        await post_b.get_by_role("button", name=f"View image: {alt}").click()
        viewer = page_b.get_by_role("dialog", name="Image")
        await expect(viewer).to_be_visible()
        await expect(viewer.locator("img")).to_have_attribute("src", media["url"])
        await expect(viewer.locator("img")).to_have_attribute("alt", alt)
        await expect(viewer.locator(".viewer-alt")).to_have_text(alt)
        await screenshot(page_b, "media-viewer")
        await page_b.keyboard.press("Escape")
        await expect(viewer).to_be_hidden()


async def test_an_upload_that_is_not_an_image_shows_why_and_blocks_the_post(
    system: System, browser: Browser, api: Api
) -> None:
    me = await api.sign_up("bad")
    async with opened(browser, system) as (_, page):
        await sign_in(page, me.handle)
        await page.get_by_label("What's happening?").fill("this should not go out with it")
        # The browser types it by its name (image/png); only the server finds out.
        fake = b"%PDF-1.7 definitely not a picture" * 10
        await attach(page, {"name": "scan.png", "mimeType": "image/png", "buffer": fake})
        item = page.locator("#attachments > li")
        await expect(item).to_have_attribute("data-state", "failed")
        reason = "the upload is not a JPEG, PNG, WebP or GIF image"
        await expect(item.locator(".att-error")).to_have_text(f"Not attached: {reason}")
        await expect(item).to_have_attribute("data-reason", f"not_an_image: {reason}")
        submit = page.get_by_role("button", name="Post")
        await expect(submit).to_be_disabled()
        await expect(page.locator("#compose-problem")).to_have_text(
            "Remove the image that could not be attached."
        )
        await screenshot(page, "media-failed")

        await page.get_by_role("button", name="Remove scan.png").click()
        await expect(page.locator("#attachments")).to_be_hidden()
        await expect(submit).to_be_enabled()
        await submit.click()
        posted = feed_post(page, "this should not go out with it")
        await expect(posted).to_have_count(1)
        await expect(posted.locator(".media-grid")).to_have_count(0)


# A paste of image files, as the clipboard of a screenshot tool or a copied picture gives:
# the page only reads the event's clipboardData, which a script can build the same way.
PASTE = """async (images) => {
  const data = new DataTransfer();
  for (const [name, base64] of images) {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    data.items.add(new File([bytes], name, { type: "image/png" }));
  }
  const box = document.getElementById("compose-text");
  box.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true }));
}"""


async def test_pasted_images_attach_up_to_four_and_each_can_be_removed(
    system: System, browser: Browser, api: Api
) -> None:
    me = await api.sign_up("paste")
    async with opened(browser, system) as (_, page):
        await sign_in(page, me.handle)
        await page.get_by_label("What's happening?").fill("four at most")
        png = base64.b64encode(harbour_png((120, 80))).decode()
        await page.evaluate(PASTE, [[f"pasted-{n}.png", png] for n in range(5)])
        items = page.locator("#attachments > li")
        await expect(items).to_have_count(4)
        await expect(page.locator("#compose-error")).to_have_text(
            "A post can have at most 4 images."
        )
        await expect(page.get_by_role("button", name="Add images")).to_be_disabled()
        for n in range(4):
            await expect(items.nth(n)).to_have_attribute("data-state", "ready")
        await page.get_by_role("button", name="Remove pasted-1.png").click()
        await expect(items).to_have_count(3)
        await expect(page.get_by_role("button", name="Add images")).to_be_enabled()
        kept = [await item.get_attribute("data-media-id") for item in await items.all()]
        await page.get_by_role("button", name="Post").click()
        posted = feed_post(page, "four at most")
        await expect(posted.locator(".media-grid.n3 img")).to_have_count(3)
        # The three kept, in the order they were attached; the removed one is not there.
        post = await newest_post(api, me)
        assert [m["id"] for m in post["media"]] == kept
