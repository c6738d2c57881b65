"""Audit records: one per request decision, to the log as JSON lines and to NATS."""

from __future__ import annotations

import logging
import re
from typing import Any

from shoal.protocol import AuditRecord

audit_log = logging.getLogger("shoal.audit")

_SECRET_KEY = re.compile(r"env|secret|password|passwd|token|credential|key|auth", re.IGNORECASE)
REDACTED = "<redacted>"
_MAX_DEPTH = 6
_MAX_STRING = 256


def redact(value: Any, *, depth: int = 0) -> Any:
    """Arguments with values under secret-looking keys replaced, and long strings cut."""
    if depth > _MAX_DEPTH:
        return "…"
    if isinstance(value, dict):
        return {
            str(k): REDACTED if _SECRET_KEY.search(str(k)) else redact(v, depth=depth + 1)
            for k, v in list(value.items())[:64]
        }
    if isinstance(value, list | tuple):
        return [redact(v, depth=depth + 1) for v in list(value)[:64]]
    if isinstance(value, str) and len(value) > _MAX_STRING:
        return value[:_MAX_STRING] + "…"
    return value


def log_record(record: AuditRecord) -> None:
    audit_log.info("%s", record.model_dump_json(exclude_none=True))
