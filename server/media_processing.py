"""Turns an uploaded image into what we serve: bytes in, clean bytes out. No I/O.

It refuses what is not what it claims (magic bytes against the declared type), images
over the pixel limit (checked from the header, before any pixel is decoded: Pillow's
own MAX_IMAGE_PIXELS only warns below twice its value), and anything Pillow cannot
decode. What it returns carries no metadata at all: the pixels are copied into a new
image, so EXIF (GPS positions), XMP, ICC profiles, comments and PNG text never survive.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import blurhash
from PIL import Image, ImageOps, UnidentifiedImageError

PREVIEW_WIDTH = 640
BLURHASH_COMPONENTS = (4, 3)
BLURHASH_SOURCE_WIDTH = 64  # the hash is 12 numbers: a thumbnail gives the same ones
JPEG_QUALITY = 85

# What each accepted type must start with, and Pillow's name for its decoder.
_PILLOW_FORMAT = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
}


class MediaRefused(Exception):
    """The upload is not an image we accept; `code` is stable, the message is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def reason(self) -> str:
        return f"{self.code}: {self}"


@dataclass(frozen=True, slots=True)
class Rendition:
    data: bytes
    content_type: str
    extension: str


@dataclass(frozen=True, slots=True)
class ProcessedImage:
    image: Rendition
    preview: Rendition
    width: int
    height: int
    blurhash: str


def sniff(data: bytes) -> str | None:
    """The image type the bytes really are (by their magic numbers), if one we accept."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def process(data: bytes, declared: str, max_pixels: int) -> ProcessedImage:
    real = sniff(data)
    if real is None:
        raise MediaRefused("not_an_image", "the upload is not a JPEG, PNG, WebP or GIF image")
    if real != declared:
        raise MediaRefused("type_mismatch", f"the upload is {real}, not {declared} as declared")
    image = _open(data, _PILLOW_FORMAT[real], max_pixels)
    try:
        pixels = _decode(image)
    finally:
        image.close()
    return _renditions(pixels, keep_alpha=real != "image/jpeg")


def _open(data: bytes, pillow_format: str, max_pixels: int) -> Image.Image:
    """Reads the header only; refuses before decoding when the image is too large."""
    # Pillow's own guard, at our limit: it raises at twice the limit before allocating
    # anything; between once and twice it only warns, hence the explicit check below.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            # We check the size ourselves below; the warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[pillow_format])
    except Image.DecompressionBombError:
        raise MediaRefused(
            "too_many_pixels", f"the image has more than {max_pixels} pixels"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise MediaRefused("undecodable", f"the image cannot be decoded ({exc})") from None
    width, height = image.size
    if width <= 0 or height <= 0 or width * height > max_pixels:
        image.close()
        raise MediaRefused(
            "too_many_pixels",
            f"the image is {width}x{height}, more than {max_pixels} pixels",
        )
    return image


def _decode(image: Image.Image) -> Image.Image:
    """The first frame's pixels, upright, in RGB or RGBA, in a new image with no info."""
    try:
        image.seek(0)  # GIF / animated WebP: the first frame
        image.load()
        upright = _upright(image)
        has_alpha = upright.mode in ("RGBA", "LA", "PA") or (
            upright.mode == "P" and "transparency" in upright.info
        )
        mode = "RGBA" if has_alpha else "RGB"
        converted = upright.convert(mode)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise MediaRefused("undecodable", f"the image cannot be decoded ({exc})") from None
    # Only the pixels cross over: a fresh image has an empty `info` (no exif, icc, xmp).
    return Image.frombytes(mode, converted.size, converted.tobytes())


def _upright(image: Image.Image) -> Image.Image:
    """Turned by its EXIF orientation (which moves pixels, never adds any). Broken EXIF
    is common in real photos and is dropped anyway: the image is then kept as stored."""
    try:
        return ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        return image


def _encode(image: Image.Image, alpha: bool) -> Rendition:
    out = io.BytesIO()
    if alpha and image.mode == "RGBA":
        image.save(out, format="PNG", optimize=True)
        return Rendition(out.getvalue(), "image/png", "png")
    image.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return Rendition(out.getvalue(), "image/jpeg", "jpg")


def _renditions(pixels: Image.Image, keep_alpha: bool) -> ProcessedImage:
    width, height = pixels.size
    if width > PREVIEW_WIDTH:
        preview_size = (PREVIEW_WIDTH, max(1, round(height * PREVIEW_WIDTH / width)))
        preview = pixels.resize(preview_size, Image.Resampling.LANCZOS)
    else:
        preview = pixels
    small_w = min(width, BLURHASH_SOURCE_WIDTH)
    small = pixels.resize((small_w, max(1, round(height * small_w / width)))).convert("RGB")
    return ProcessedImage(
        image=_encode(pixels, keep_alpha),
        preview=_encode(preview, keep_alpha),
        width=width,
        height=height,
        blurhash=_blurhash(small),
    )


def _blurhash(small: Image.Image) -> str:
    """blurhash wants rows of [r, g, b] pixels (y, then x)."""
    width, height = small.size
    raw = small.tobytes()
    rows = [
        [list(raw[i : i + 3]) for i in range(row * width * 3, (row + 1) * width * 3, 3)]
        for row in range(height)
    ]
    x, y = BLURHASH_COMPONENTS
    return str(blurhash.encode(rows, components_x=x, components_y=y))
