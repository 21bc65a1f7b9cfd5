"""The S3-compatible object store media live in (AWS S3, MinIO, R2, locally s3proxy).

Signing (SigV4, pre-signed URLs) and the S3 calls are botocore's, through aiobotocore;
nothing here hand-builds a signature. One client per process, opened at start-up by its
owner (`ObjectStore.open`) and closed on exit; never one at import time.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from core.media_urls import public_read_acl
from core.settings import Settings

# Every call has a bound: a store that stops answering fails the call, not the worker.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0


class ObjectStoreError(Exception):
    """The store refused or did not answer; `retriable` when trying later may help."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class ObjectTooLarge(ObjectStoreError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"object is {size} bytes, over {limit}", retriable=False)


@dataclass(frozen=True, slots=True)
class PresignedPut:
    url: str
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int
    content_type: str


def _not_found(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


class ObjectStore:
    def __init__(self, client: Any, bucket: str, public_acl: str | None = None) -> None:
        self._client = client
        self.bucket = bucket
        self._public_acl = public_acl  # given to objects put with public=True

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[ObjectStore]:
        session = get_session()
        config = Config(
            signature_version="s3v4",
            # Path style (endpoint/bucket/key): works with every S3 API, and on loopback.
            s3={"addressing_style": "path"},
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"max_attempts": 2, "mode": "standard"},
            # botocore >= 1.36 adds CRC32 checksum headers to every upload by default;
            # many S3-compatible stores (s3proxy among them) refuse headers they do not
            # know. Only where an operation requires one.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        async with session.create_client(
            "s3",
            endpoint_url=settings.s3_endpoint,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key,
            aws_secret_access_key=settings.s3_secret_key,
            config=config,
        ) as client:
            yield cls(client, settings.s3_bucket, public_read_acl(settings))

    async def presign_put(
        self, key: str, content_type: str, size: int, expires_in: int
    ) -> PresignedPut:
        """A PUT URL whose signature covers Content-Type and Content-Length: the store
        refuses another type or size (SignatureDoesNotMatch)."""
        url = await self._client.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ContentType": content_type,
                "ContentLength": size,
            },
            ExpiresIn=expires_in,
        )
        return PresignedPut(str(url), {"Content-Type": content_type, "Content-Length": str(size)})

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size and type, or None when it is not there (yet)."""
        try:
            reply = await self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _not_found(exc):
                return None
            raise ObjectStoreError(f"HEAD {key}: {exc}", retriable=True) from exc
        except BotoCoreError as exc:
            raise ObjectStoreError(f"HEAD {key}: {exc}", retriable=True) from exc
        return ObjectInfo(int(reply["ContentLength"]), str(reply.get("ContentType", "")))

    async def get(self, key: str, limit: int) -> bytes:
        """The object's bytes; ObjectTooLarge past `limit` (read no further than that)."""
        try:
            reply = await self._client.get_object(Bucket=self.bucket, Key=key)
            size = int(reply["ContentLength"])
            if size > limit:
                reply["Body"].close()
                raise ObjectTooLarge(size, limit)
            async with reply["Body"] as body:
                data: bytes = await body.read()
        except ClientError as exc:
            raise ObjectStoreError(f"GET {key}: {exc}", retriable=not _not_found(exc)) from exc
        except BotoCoreError as exc:
            raise ObjectStoreError(f"GET {key}: {exc}", retriable=True) from exc
        return data

    async def put(self, key: str, data: bytes, content_type: str, *, public: bool = False) -> None:
        """Store an object; `public`: readers fetch it by its public URL (public_url)."""
        extra = {"ACL": self._public_acl} if public and self._public_acl else {}
        try:
            await self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                CacheControl="public, max-age=31536000, immutable",
                **extra,
            )
        except (ClientError, BotoCoreError) as exc:
            raise ObjectStoreError(f"PUT {key}: {exc}", retriable=True) from exc

    async def delete(self, key: str) -> None:
        try:
            await self._client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise ObjectStoreError(f"DELETE {key}: {exc}", retriable=True) from exc

    async def ensure_bucket(self) -> bool:
        """Create the bucket unless it exists; True when it was created."""
        try:
            await self._client.head_bucket(Bucket=self.bucket)
            return False
        except ClientError as exc:
            if not _not_found(exc):
                raise ObjectStoreError(f"bucket {self.bucket}: {exc}", retriable=True) from exc
        except BotoCoreError as exc:
            raise ObjectStoreError(f"bucket {self.bucket}: {exc}", retriable=True) from exc
        try:
            await self._client.create_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise ObjectStoreError(f"create bucket {self.bucket}: {exc}", retriable=True) from exc
        return True
