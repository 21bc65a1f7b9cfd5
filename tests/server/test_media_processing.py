"""server/media_processing.py alone (bytes in, bytes out): every accepted format, what is
refused, and that no metadata of any kind survives."""

from __future__ import annotations

import io

import pytest
from PIL import Image, PngImagePlugin

from server.media_processing import PREVIEW_WIDTH, MediaRefused, process, sniff
from tests.support.media import jpeg_with_gps

LIMIT = 16_000_000


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def test_gif_keeps_its_first_frame() -> None:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], comment=b"hi")
    result = process(data, "image/gif", LIMIT)
    with Image.open(io.BytesIO(result.image.data)) as first:
        r, _, b = first.convert("RGB").getpixel((5, 5))  # type: ignore[misc]
        assert r > 200 and b < 50
        assert "comment" not in first.info


def test_png_text_and_icc_are_dropped_and_transparency_kept() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Jane Doe, 12 Secret Street")
    image = Image.new("RGBA", (900, 300), (10, 200, 10, 128))
    data = encoded(image, "PNG", pnginfo=info, icc_profile=b"\0" * 128)
    assert b"Secret Street" in data
    result = process(data, "image/png", LIMIT)
    assert result.image.content_type == "image/png"
    for stored in (result.image.data, result.preview.data):
        assert b"Secret Street" not in stored and b"iCCP" not in stored
    with Image.open(io.BytesIO(result.preview.data)) as preview:
        assert preview.size == (PREVIEW_WIDTH, 213) and preview.mode == "RGBA"


def test_webp_is_accepted_and_served_without_metadata() -> None:
    image = Image.new("RGB", (320, 200), (1, 2, 3))
    exif = image.getexif()
    exif[0x010F] = "SecretCam 3000"
    for attached in (exif.tobytes(), b"Exif\0\0MM broken"):  # broken EXIF is no failure
        data = encoded(image, "WEBP", exif=attached)
        assert sniff(data) == "image/webp" and b"EXIF" in data  # WebP's EXIF chunk
        result = process(data, "image/webp", LIMIT)
        assert (result.width, result.height) == (320, 200)
        assert b"EXIF" not in result.image.data and b"SecretCam" not in result.image.data


def test_jpeg_is_turned_upright_and_its_gps_dropped() -> None:
    image = Image.new("RGB", (200, 100))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = process(encoded(image, "JPEG", exif=exif), "image/jpeg", LIMIT)
    assert (rotated.width, rotated.height) == (100, 200)
    result = process(jpeg_with_gps(), "image/jpeg", LIMIT)
    assert b"SecretCam" not in result.image.data and b"Exif" not in result.image.data


@pytest.mark.parametrize(
    ("data", "declared", "code"),
    [
        (b"", "image/png", "not_an_image"),
        (b"GIF89a" + b"\0" * 20, "image/png", "type_mismatch"),
        (b"GIF89a" + b"\0" * 20, "image/gif", "undecodable"),
    ],
)
def test_refusals_have_stable_codes(data: bytes, declared: str, code: str) -> None:
    with pytest.raises(MediaRefused) as refused:
        process(data, declared, LIMIT)
    assert refused.value.code == code and refused.value.reason.startswith(code + ": ")


def test_the_pixel_limit_is_checked_before_decoding() -> None:
    data = encoded(Image.new("1", (4_001, 4_000)), "PNG")
    with pytest.raises(MediaRefused) as refused:
        process(data, "image/png", LIMIT)
    assert refused.value.code == "too_many_pixels"
    assert process(encoded(Image.new("1", (4_000, 4_000)), "PNG"), "image/png", LIMIT).width
