"""Media: starting an upload, its status, its alt text."""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired

from pydantic import BeforeValidator, ConfigDict, Field, with_config
from typing_extensions import TypedDict

from server.contract.fields import ALT_TEXT_MAX, AltText, Body, Id, Refusal, Timestamp, refuse

# Images only: what browsers show and Pillow decodes safely (GIFs keep their first
# frame), with the extension each is stored under.
CONTENT_TYPES = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
}
ContentType = Literal["image/jpeg", "image/png", "image/webp", "image/gif"]


def _media_type(value: object) -> object:
    """A string, compared case-insensitively and trimmed (as HTTP media types are)."""
    if not isinstance(value, str):
        raise refuse("invalid_field", "{field} must be a string")
    return value.strip().lower()


class NewMedia(Body):
    """POST /v1/media."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"content_type": "image/jpeg", "size": 245_760}]}
    )

    content_type: Annotated[
        ContentType,
        BeforeValidator(_media_type),
        Refusal(
            "unsupported_content_type", f"content_type must be one of {', '.join(CONTENT_TYPES)}"
        ),
    ] = Field(description="Case-insensitive, surrounding spaces ignored.")
    size: int = Field(
        ge=1,
        description="The exact byte length that will be uploaded; over `MEDIA_MAX_BYTES` "
        "(8 MiB by default): 413 `media_too_large`.",
    )


class MediaPatch(Body):
    alt_text: AltText = Field(
        description=f"Up to {ALT_TEXT_MAX} characters after NFC normalisation and trimming; "
        "newlines allowed, other control characters not."
    )


@with_config(ConfigDict(extra="forbid"))
class Upload(TypedDict):
    url: Annotated[str, Field(json_schema_extra={"format": "uri"})]
    method: Literal["PUT"]
    headers: Annotated[
        dict[str, str],
        Field(
            description="Send exactly these (`Content-Type`, `Content-Length`): they are signed."
        ),
    ]


@with_config(ConfigDict(extra="forbid"))
class MediaUpload(TypedDict):
    media_id: Id
    upload: Upload
    expires_at: Timestamp


@with_config(ConfigDict(extra="forbid"))
class Media(TypedDict):
    id: Id
    type: Literal["image"]
    status: Literal["processing", "ready", "failed"]
    reason: NotRequired[
        Annotated[
            str,
            Field(
                description="Why processing failed: a stable code, a colon, and words "
                "(`upload_missing`, `not_an_image`, `type_mismatch`, `too_many_pixels`, "
                "`undecodable`, `upload_mismatch`, `too_large`). Only when `failed`."
            ),
        ]
    ]
    content_type: ContentType
    size: Annotated[int, Field(ge=1, description="Declared upload size.")]
    url: Annotated[
        str | None,
        Field(description="The re-encoded image (no metadata) once `ready`."),
    ]
    preview_url: Annotated[str | None, Field(description="At most 640 px wide, once `ready`.")]
    width: Annotated[int, Field(ge=1)] | None
    height: Annotated[int, Field(ge=1)] | None
    blurhash: Annotated[
        str | None, Field(description="A placeholder to show while the image loads.")
    ]
    alt_text: Annotated[str, Field(max_length=ALT_TEXT_MAX)]
    post_id: Annotated[Id | None, Field(description="The post it is attached to.")]
    created_at: Timestamp
