"""The one error shape of the API (server/http/errors.py writes it); the codes and what they
mean are listed with the document (server/http/openapi.py)."""

from __future__ import annotations

from typing import Annotated, NotRequired

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict


@with_config(ConfigDict(extra="forbid"))
class ErrorDetail(TypedDict):
    code: Annotated[str, Field(description="Machine-readable; stable.")]
    message: Annotated[str, Field(description="For humans; may change.")]
    field: NotRequired[
        Annotated[str, Field(description="The body field or query parameter at fault.")]
    ]


@with_config(
    ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "too_long",
                        "message": "text is longer than 280 characters",
                        "field": "text",
                    }
                }
            ]
        },
    )
)
class Error(TypedDict):
    error: ErrorDetail
