"""Engine values into Python ones."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def decode(chunk: bytes | str) -> str:
    """Engine output as text (invalid UTF-8 replaced)."""
    return chunk.decode("utf-8", "replace") if isinstance(chunk, bytes) else str(chunk)


def engine_time(value: Any) -> datetime | None:
    """Engine timestamps: Unix seconds, or RFC 3339 (nanoseconds allowed)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    text = str(value)
    if text.startswith("0001-01-01"):
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
