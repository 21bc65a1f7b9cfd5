"""Reads the Lua scripts kept as .lua files beside the code that runs them: no script
lives in a Python string. Fills the @NAME@ markers a script leaves for constants owned
in Python, and refuses a script with a marker left unfilled; it never talks to Redis."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

MARKER = re.compile(r"@[A-Z_]+@")


def read_lua(directory: Path, name: str, markers: Mapping[str, str] | None = None) -> str:
    text = (directory / f"{name}.lua").read_text()
    for marker, value in (markers or {}).items():
        text = text.replace(marker, value)
    left = MARKER.search(text)
    if left is not None:
        raise ValueError(f"{directory / name}.lua: marker {left.group()} left unfilled")
    return text
