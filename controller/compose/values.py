"""Scalar conversions of compose values: booleans, durations, byte sizes, type names."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

TRUE_WORDS = {"y", "yes", "true", "on"}
FALSE_WORDS = {"n", "no", "false", "off"}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_BYTES = re.compile(r"(\d+(?:\.\d+)?) ?([kmgtp])?(i)?b?", re.IGNORECASE)
_BYTE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
PORT_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def parse_duration(text: str) -> float | None:
    text = text.strip()
    if text == "0":
        return 0.0
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match[1]) * _DURATION_UNITS[match[2]]
        pos = match.end()
    return total if pos == len(text) and pos > 0 else None


def parse_bytes(text: str) -> int | None:
    match = _BYTES.fullmatch(text.strip())
    if match is None:
        return None
    return int(float(match[1]) * _BYTE_UNITS[(match[2] or "").lower()])


def model_error(exc: ValidationError) -> tuple[str, str]:
    """(dotted location, message) of a pydantic error, for a ComposeError."""
    first = exc.errors()[0]
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
    return loc, str(first["msg"]).removeprefix("Value error, ")
