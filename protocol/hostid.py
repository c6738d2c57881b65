"""Host ids: subject tokens that can never widen a subscription."""

from __future__ import annotations

import re

from .errors import InvalidHostId

HOST_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_HOST_ID_RE = re.compile(HOST_ID_PATTERN)
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_-]")


def validate_host_id(value: str) -> str:
    """Return ``value`` if it is a valid host id, else raise :class:`InvalidHostId`."""
    if not isinstance(value, str):
        raise InvalidHostId(f"host id must be a string, not {type(value).__name__}")
    if not _HOST_ID_RE.fullmatch(value):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise InvalidHostId(
            f"invalid host id {shown!r}: use 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'"
        )
    return value


def sanitize_host_id(name: str) -> str:
    """Derive a valid host id from a host name, replacing anything unsafe with '-'."""
    cleaned = _UNSAFE_RE.sub("-", name.strip())[:64].strip("-") or "host"
    return validate_host_id(cleaned)
