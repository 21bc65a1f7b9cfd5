"""Field types shared by the models: ids, handles, cleaned texts, and how each field's
refusals are reported (`Refusal`: the error code and message when a value breaks its
bounds). The bounds themselves are pydantic constraints, so the validation and the
JSON Schema read the same numbers.

Never raise ApiError here: validators raise pydantic errors, server/contract/parse.py
turns them into the API's error shape.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

MAX_ID = 2**63 - 1
ID_PATTERN = "^[0-9]{1,19}$"
EXAMPLE_ID = "7340032000000000001"
EXAMPLE_USER_ID = "7340031000000000001"
EXAMPLE_TIME = "2025-06-01T12:00:00.000Z"
EXAMPLE_CURSOR = "djE6ZmVlZDo3MzQwMDMyMDAwMDAwMDAwMDAx"


class Body(BaseModel):
    """A request body: closed (an unknown field is refused), strict (no silent coercion:
    "1" is not 1, true is not 1), and validated from what orjson parsed."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Out(BaseModel):
    """A response: closed, so the document promises exactly the keys the server sends."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True)
class Refusal:
    """How a field's bound or pattern violations are answered (422 with `field`).

    `message` replaces the one said from the bound; `short` is (code, message) for a value
    under its minimum length; `missing` is the code of an absent required field."""

    code: str = "invalid_field"
    message: str | None = None
    short: tuple[str, str] | None = None
    missing: str = "missing_field"


# The codes validators raise themselves (each also a code of server/http/openapi.py).
REFUSAL_CODES = frozenset({"invalid_field", "invalid_characters", "empty_text"})


def refuse(code: str, message: str) -> PydanticCustomError:
    """A refusal raised by a validator; `{field}` in the message names the field."""
    assert code in REFUSAL_CODES, code
    return PydanticCustomError(code, message)


# --- ids ---------------------------------------------------------------------------


def parse_id(value: Any) -> int:
    """Ids travel as decimal strings (64-bit ints do not survive JavaScript); a JSON
    integer is accepted too. Length first: int() of a huge digit string is slow."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise refuse("invalid_field", "{field} must be an id (a decimal string)")
    text = str(value)
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise refuse("invalid_field", "{field} must be an id (a decimal string)")
    number = int(text)
    if not 0 < number <= MAX_ID:
        raise refuse("invalid_field", "{field} is out of range")
    return number


ID_SCHEMA = {
    "type": "string",
    "pattern": ID_PATTERN,
    "description": f"A 64-bit id as a decimal string (1 to {MAX_ID}); ids are time-ordered.",
    "examples": [EXAMPLE_ID],
}
# An id in a request: checked by parse_id, documented as what it accepts.
IdInput = Annotated[
    int,
    PlainValidator(parse_id),
    WithJsonSchema(
        {
            "description": "An id: a decimal string (preferred: 64-bit integers do not "
            "survive JavaScript), or a JSON integer. Malformed or out of range: 422 "
            "`invalid_field`.",
            "anyOf": [
                {"type": "string", "pattern": ID_PATTERN},
                {"type": "integer", "minimum": 1, "maximum": MAX_ID},
            ],
        }
    ),
]
# An id in a response: always the decimal string.
Id = Annotated[str, WithJsonSchema(ID_SCHEMA)]
Timestamp = Annotated[
    str,
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "description": "ISO-8601 in UTC with milliseconds.",
            "examples": [EXAMPLE_TIME],
        }
    ),
]
Count = Annotated[int, WithJsonSchema({"type": "integer", "minimum": 0})]


# --- handles and secrets -------------------------------------------------------------

PASSWORD_MAX = 128  # code points; sign-in refuses longer ones without a match
HANDLE_MAX = 15
HANDLE_CHARS = "[A-Za-z0-9_]"
Handle = Annotated[
    str,
    StringConstraints(min_length=1, max_length=HANDLE_MAX, pattern=f"^{HANDLE_CHARS}+$"),
    Refusal("invalid_handle", f"handle must be 1-{HANDLE_MAX} characters of A-Z, a-z, 0-9 and _"),
]
Password = Annotated[
    str,
    StringConstraints(min_length=8, max_length=PASSWORD_MAX, pattern="^[^\\x00]*$"),
    Refusal("invalid_password", "password must be 8-128 characters, without NUL"),
]
IdempotencyKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern="^[\\x21-\\x7e]+$"),
    Refusal(message="idempotency_key must be 1-128 printable ASCII characters"),
]


# --- user text -----------------------------------------------------------------------

# What renders as nothing: separators and format characters (zero-width space, joiners,
# the BOM, the soft hyphen, bidi marks). A post made only of these would show as blank.
_INVISIBLE = frozenset({"Zs", "Zl", "Zp", "Cf"})


def has_bad_characters(text: str, allow_newlines: bool) -> bool:
    """NUL, control characters, surrogates and non-characters; newlines where allowed."""
    # Fast path in C: a printable string has none of Cc, Cs, Cn (nor Cf, Z*, Co, which
    # are allowed: those fall through to the exact walk below).
    if (text.replace("\n", "") if allow_newlines else text).isprintable():
        return False
    for char in text:
        if char == "\n" and allow_newlines:
            continue
        if unicodedata.category(char) in ("Cc", "Cs", "Cn"):
            return True
    return False


def normalise(value: str, allow_newlines: bool) -> str:
    """NFC, CRLF as LF, trimmed; refused with control or invalid characters. Lengths are
    then counted in code points of this form (a letter with a combining accent counts
    once where a precomposed form exists)."""
    if value.isascii():  # NFC leaves ASCII unchanged: skip the table lookups
        text = value.replace("\r\n", "\n").strip()
    else:
        text = unicodedata.normalize("NFC", value.replace("\r\n", "\n")).strip()
    if has_bad_characters(text, allow_newlines):
        raise refuse("invalid_characters", "{field} contains control or invalid characters")
    return text


def _cleaned(allow_newlines: bool) -> BeforeValidator:
    def clean(value: Any) -> Any:
        # Anything but a string goes on unchanged, to be refused by the str check.
        return normalise(value, allow_newlines) if isinstance(value, str) else value

    return BeforeValidator(clean)


def _visible(text: str) -> str:
    if all(c.isspace() or unicodedata.category(c) in _INVISIBLE for c in text):
        raise refuse("empty_text", "{field} must have a visible character")
    return text


POST_MAX_CHARS = 280
PostText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=POST_MAX_CHARS),
    _cleaned(allow_newlines=True),
    AfterValidator(_visible),
    Refusal("too_long", short=("empty_text", "{field} must have a visible character")),
]
DISPLAY_NAME_MAX = 50
DisplayName = Annotated[
    str, StringConstraints(max_length=DISPLAY_NAME_MAX), _cleaned(False), Refusal("too_long")
]
ALT_TEXT_MAX = 1500
AltText = Annotated[
    str, StringConstraints(max_length=ALT_TEXT_MAX), _cleaned(True), Refusal("too_long")
]
