"""Audit records: one per request decision, to the log as JSON lines and to NATS."""

from __future__ import annotations

import logging
import re
from typing import Any

from shoal.protocol import AuditRecord, Reply, Request, utcnow

from .trust import TrustEntry

audit_log = logging.getLogger("shoal.audit")

_SECRET_KEY = re.compile(
    r"env|secret|sealed|password|passwd|token|credential|key|auth", re.IGNORECASE
)
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


def audit_record(
    *,
    host_id: str,
    verb_token: str,
    reply: Reply,
    request: Request | None,
    signer: TrustEntry | None,
    key: str | None,
    accepted: bool,
) -> AuditRecord:
    """The record of one decision: who asked what, accepted or refused, and how it ended."""
    error = reply.error
    return AuditRecord(
        at=utcnow(),
        host=host_id,
        request_id=reply.id,
        verb=request.verb if request is not None else verb_token[:32],
        sender=request.sender if request is not None else "",
        signer=signer.name if signer is not None else None,
        key=key,
        role=str(signer.role) if signer is not None else None,
        decision="accepted" if accepted else "refused",
        code=str(error.code) if error is not None else None,
        reason=error.message[:500] if error is not None else "",
        outcome=("ok" if reply.ok else "error") if accepted else None,
        duration=round(reply.duration, 6),
        args=redact(request.args) if request is not None else {},
    )
