"""Images made in the test (with EXIF and GPS where asked) and the client's side of a
media upload: POST /v1/media, PUT to the pre-signed URL, poll until processed."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import aiohttp
from PIL import Image

from tests.support.api import Client, User

GPS_IFD = 0x8825
MAKE = 0x010F


def jpeg_with_gps(size: tuple[int, int] = (1280, 960)) -> bytes:
    image = Image.new("RGB", size, (30, 120, 200))
    exif = image.getexif()
    exif[MAKE] = "SecretCam 3000"
    gps = exif.get_ifd(GPS_IFD)
    gps[1], gps[2], gps[3], gps[4] = "N", (48.0, 51.0, 24.0), "E", (2.0, 21.0, 3.0)
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=90)
    return out.getvalue()


def png(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, "PNG")
    return out.getvalue()


async def start_upload(api: Client, user: User, content_type: str, size: int) -> dict[str, Any]:
    resp = await api.post(
        "/v1/media", json={"content_type": content_type, "size": size}, headers=user.auth
    )
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def put(upload: dict[str, Any], data: bytes, **headers: str) -> tuple[int, str]:
    """PUT to the pre-signed URL as a browser would: the signed headers unless overridden."""
    sent = {**upload["upload"]["headers"], **headers}
    sent.pop("Content-Length", None)  # aiohttp sets it from the body
    async with (
        aiohttp.ClientSession() as session,
        session.put(upload["upload"]["url"], data=data, headers=sent) as resp,
    ):
        return resp.status, await resp.text()


async def upload(api: Client, user: User, data: bytes, content_type: str) -> str:
    started = await start_upload(api, user, content_type, len(data))
    status, text = await put(started, data)
    assert status == 200, text
    media_id: str = started["media_id"]
    return media_id


async def processed(api: Client, user: User, media_id: str, timeout: float = 20.0) -> Any:
    """The media once it is no longer processing."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await api.get(f"/v1/media/{media_id}", headers=user.auth)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        if body["status"] != "processing":
            return body
        assert asyncio.get_running_loop().time() < deadline, f"still processing: {body}"
        await asyncio.sleep(0.1)
