"""Query parameters: pages (limit, cursor), the feed's algorithm, the delta's `since`,
search words. The OpenAPI parameters are generated from these models; the parsers in
server/http/validation.py read their bounds from here (`bounds`) rather than run pydantic
per request, because GET /v1/feed is the hottest path and its fast path
(server/http/fast_feed.py) parses two plain strings."""

from __future__ import annotations

from typing import Annotated, Literal, NamedTuple

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema

from server.contract.fields import EXAMPLE_CURSOR, ID_SCHEMA

CURSOR_MAX = 200
# Opaque; only valid for the list that returned it.
Cursor = Annotated[str, StringConstraints(max_length=CURSOR_MAX)]
SEARCH_MAX = 200


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Page(Query):
    """?limit=&cursor= of every cursor-paginated list."""

    limit: int = Field(20, ge=1, le=100, description="Page size. Otherwise: 422 `invalid_field`.")
    cursor: Cursor | None = Field(
        None,
        description="`next_cursor` of the previous page; absent or empty: the first page.",
        examples=[EXAMPLE_CURSOR],
    )


class FeedQuery(Page):
    algorithm: Literal["chronological", "ranked"] = Field(
        "chronological",
        description="`chronological` (the default) or `ranked`. Anything else: 400 "
        "`invalid_algorithm`.",
    )


class DeltaQuery(Query):
    since: Annotated[str, WithJsonSchema(ID_SCHEMA)] = Field(
        description="A post id, usually the newest shown."
    )
    limit: int = Field(
        100, ge=1, le=200, description="At most this many. Otherwise: 422 `invalid_field`."
    )


class SearchQuery(Page):
    q: str = Field(
        min_length=1,
        max_length=SEARCH_MAX,
        description=f"Words (web search syntax): 1-{SEARCH_MAX} characters after trimming, "
        "no control characters. Missing or blank: 422 `missing_field`.",
    )


class Bounds(NamedTuple):
    default: int
    minimum: int
    maximum: int


def bounds(query: type[Query], name: str) -> Bounds:
    """An integer parameter's default and inclusive range, as its model declares them."""
    info = query.model_fields[name]
    low = [m.ge for m in info.metadata if isinstance(m, annotated_types.Ge)]
    high = [m.le for m in info.metadata if isinstance(m, annotated_types.Le)]
    assert isinstance(info.default, int) and low and high, name
    return Bounds(info.default, int(low[0]), int(high[0]))  # type: ignore[call-overload]


PAGE_LIMIT = bounds(Page, "limit")
DELTA_LIMIT = bounds(DeltaQuery, "limit")
