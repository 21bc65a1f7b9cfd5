"""Where readers fetch stored media, and whether objects are stored public-read: plain
functions of the settings, apart from core/object_store.py so that what only builds
URLs (every post view, fan-out's live events) does not import the S3 client library."""

from __future__ import annotations

from core.settings import Settings


def media_base_url(settings: Settings) -> str:
    """The base, ending in "/", under which readers fetch stored objects: MEDIA_PUBLIC_URL
    (a CDN), else the store itself (S3_ENDPOINT/S3_BUCKET, path style)."""
    base = settings.media_public_url.rstrip("/")
    if not base:
        base = f"{settings.s3_endpoint.rstrip('/')}/{settings.s3_bucket}"
    return base + "/"


def public_url(settings: Settings, key: str) -> str:
    return media_base_url(settings) + key


def public_read_acl(settings: Settings) -> str | None:
    """The canned ACL for what readers fetch. Without MEDIA_PUBLIC_URL they fetch from
    the store itself, anonymously, so each object is made public-read (the local
    s3proxy, MinIO, most S3 APIs); with a CDN in front the bucket stays private and the
    CDN reads with its own grant (AWS buckets with ACLs disabled must use this, or a
    bucket policy plus MEDIA_PUBLIC_URL set to the bucket's own URL)."""
    return None if settings.media_public_url else "public-read"
