"""A request body through its model, or the API's one error (422 with `code` and `field`).

pydantic reports every problem; the API answers one, as a person fixing a form would
want it: an unknown field first (shallowest, then by name), else the first problem in
field order. Codes come from the error's kind and the field's Refusal
(server/contract/fields.py); they are the codes clients already rely on.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, RootModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from server.contract.fields import REFUSAL_CODES, Refusal
from server.http.errors import ApiError, invalid

M = TypeVar("M", bound=BaseModel)

# Errors of a value outside its bounds or pattern: answered with the field's Refusal.
_BOUNDS = {
    "string_too_long": "{field} is longer than {max_length} characters",
    "string_too_short": "{field} is shorter than {min_length} characters",
    "string_pattern_mismatch": "{field} is malformed",
    "too_long": "{field} has more than {max_length} items",
    "too_short": "{field} has fewer than {min_length} items",
    "greater_than_equal": "{field} must be at least {ge}",
    "greater_than": "{field} must be more than {gt}",
    "less_than_equal": "{field} must be at most {le}",
    "less_than": "{field} must be less than {lt}",
    "literal_error": "{field} must be one of {expected}",
}
_KINDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "a boolean",
    "float_type": "a number",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
}


def validate(model: type[M], body: dict[str, Any]) -> M:
    """The body as `model`; raises ApiError (422) naming the field at fault."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise refusal_of(model, exc.errors(include_url=False)) from None


def refusal_of(model: type[BaseModel], errors: Sequence[ErrorDetails]) -> ApiError:
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        first = min(unknown, key=lambda e: (len(e["loc"]), str(e["loc"][-1])))
        name = str(first["loc"][-1])
        return invalid(name, f"unknown field {name!r}", "unknown_field")
    return _answer(model, errors[0])


def _answer(model: type[BaseModel], error: ErrorDetails) -> ApiError:
    kind, context = error["type"], error.get("ctx") or {}
    if kind in ("union_tag_not_found", "union_tag_invalid"):  # the discriminator itself
        name = str(context.get("discriminator", "kind")).strip("'")
        if kind == "union_tag_not_found":
            return invalid(name, f"{name} is required", "missing_field")
        expected = str(context.get("expected_tags", "")).replace("'", "")
        return invalid(name, f"{name} must be one of: {expected}")
    field, info = _field_at(model, error["loc"])
    refusal = _refusal(info)
    if kind == "missing" or (error["input"] is None and info is not None and info.is_required()):
        return invalid(field, f"{field} is required", refusal.missing)
    if kind == "string_too_short" and refusal.short is not None:
        code, message = refusal.short
        return invalid(field, message.format(field=field), code)
    if kind in _BOUNDS:
        message = refusal.message or _BOUNDS[kind].format(field=field, **context)
        return invalid(field, message, refusal.code)
    if kind in _KINDS:
        if refusal.missing != "missing_field":  # such a field is named for any bad shape
            return invalid(field, f"{field} must be {_KINDS[kind]}", refusal.missing)
        return invalid(field, f"{field} must be {_KINDS[kind]}")
    if kind in REFUSAL_CODES:  # raised by a validator of ours (fields.refuse)
        return invalid(field, error["msg"].replace("{field}", field), kind)
    return invalid(field, f"{field} is not valid")


def _refusal(info: FieldInfo | None) -> Refusal:
    """The field's Refusal: on the field, or on its type (`DisplayName | None`)."""
    if info is None:
        return Refusal()
    found = [m for m in info.metadata if isinstance(m, Refusal)]
    return found[0] if found else _refusal_in(info.annotation) or Refusal()


def _refusal_in(annotation: Any) -> Refusal | None:
    if typing.get_origin(annotation) is typing.Annotated:
        found = [m for m in annotation.__metadata__ if isinstance(m, Refusal)]
        if found:
            return found[0]
    for arg in typing.get_args(annotation):
        inner = _refusal_in(arg)
        if inner is not None:
            return inner
    return None


def _field_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[str, FieldInfo | None]:
    """The name the API reports (the innermost field: `p256dh`, not a path) and its
    FieldInfo, following nested models, lists and a discriminated union's tags."""
    current: Any = model
    name, info = "body", None
    for part in loc:
        if isinstance(part, int):  # a list position: the list is the field
            continue
        found = _child(current, part)
        if found is None:
            return part, info
        child, info = found
        if info is not None:
            name = part
        current = child
    return name, info


def _child(node: Any, part: str) -> tuple[Any, FieldInfo | None] | None:
    if isinstance(node, type) and issubclass(node, RootModel):
        node = node.model_fields["root"].annotation
    if isinstance(node, type) and issubclass(node, BaseModel):
        info = node.model_fields.get(part)
        return None if info is None else (_inner(info.annotation), info)
    for variant in _variants(node):  # a discriminated union: `part` is the tag
        tag = variant.model_fields.get("kind")
        if tag is not None and part in typing.get_args(tag.annotation):
            return variant, None
    return None


def _variants(node: Any) -> list[type[BaseModel]]:
    return [a for a in typing.get_args(node) if isinstance(a, type) and issubclass(a, BaseModel)]


def _inner(annotation: Any) -> Any:
    """X from X | None, list[X], Annotated[X, ...]: where a nested model is found."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _inner(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return _inner(inner[0])
        return typing.Union[tuple(_inner(a) for a in inner)]  # noqa: UP007
    if origin is list:
        return _inner(typing.get_args(annotation)[0])
    return annotation


@functools.cache
def _field_adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    info = model.model_fields[name]
    annotated: Any = info.annotation
    if info.metadata:
        annotated = Annotated[annotated, *info.metadata]
    return TypeAdapter(annotated, config=ConfigDict(strict=True))


def validate_field(model: type[BaseModel], name: str, value: Any) -> Any:
    """One field of `model` by its own rule (a header standing in for a body field, or a
    caller that reads fields one at a time); raises ApiError (422) as `validate` does."""
    try:
        return _field_adapter(model, name).validate_python(value)
    except ValidationError as exc:
        errors = [{**e, "loc": (name, *e["loc"])} for e in exc.errors(include_url=False)]
        raise refusal_of(model, errors) from None  # type: ignore[arg-type]
