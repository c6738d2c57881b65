"""What the agent sends to a reply inbox, as the bytes to publish.

Pure: a reply (or progress) goes in, the parts to publish come out. A reply larger than
the server's payload limit is split into chunks (up to MAX_REPLY_BYTES); a larger one
becomes a ``payload_too_large`` error reply.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

from pydantic import BaseModel

from shoal.protocol import PayloadTooLarge, Reply, ShoalError, error_reply, request_head
from shoal.protocol.chunks import MAX_REPLY_BYTES, split_reply
from shoal.protocol.envelope import UNKNOWN_REQUEST_ID

log = logging.getLogger("shoal.agent")

Part = tuple[dict[str, str] | None, bytes]
"""Headers (None for a whole message) and payload of one message to publish."""


def encode_message(message: BaseModel, host_id: str, max_payload: int) -> list[Part]:
    """The messages to publish for ``message``: one, or a reply's chunks."""
    data = message.model_dump_json().encode()
    if len(data) <= max_payload or not isinstance(message, Reply):
        return [(None, data)]
    if len(data) <= MAX_REPLY_BYTES:
        return [(headers, part) for headers, part in split_reply(data, max_payload)]
    exc = PayloadTooLarge(
        f"the reply of {len(data)} bytes exceeds the limit of {MAX_REPLY_BYTES} bytes",
        detail={"size": len(data), "limit": MAX_REPLY_BYTES},
    )
    too_large = error_reply(
        message.id, host_id, exc, started_at=message.started_at, duration=message.duration
    )
    return [(None, too_large.model_dump_json().encode())]


def success_reply(
    request_id: str, host_id: str, result: BaseModel, started_at: datetime, t0: float
) -> Reply:
    """The final reply of a request that succeeded (``t0``: its monotonic start)."""
    return Reply(
        id=request_id,
        host=host_id,
        ok=True,
        result=result.model_dump(mode="json"),
        started_at=started_at,
        duration=time.monotonic() - t0,
    )


def failure_reply(
    request_id: str | None,
    data: bytes,
    host_id: str,
    exc: ShoalError,
    started_at: datetime,
    t0: float,
) -> Reply:
    """The error reply of a refused or failed request; its id read from ``data`` if not known."""
    rid = request_id or request_head(data)[1] or UNKNOWN_REQUEST_ID
    log.info("request %s refused or failed: %s: %s", rid, exc.code, exc.message)
    return error_reply(rid, host_id, exc, started_at=started_at, duration=time.monotonic() - t0)


def refusal_reply(data: bytes, host_id: str, exc: ShoalError, now: datetime) -> Reply:
    """The reply to a request refused before it was read (busy, shutting down)."""
    _, request_id = request_head(data)
    return error_reply(request_id or UNKNOWN_REQUEST_ID, host_id, exc, started_at=now)


def reply_outcome(reply: Reply) -> str:
    """``ok`` or the error code, as metrics count outcomes."""
    return "ok" if reply.error is None else str(reply.error.code)


__all__ = [
    "MAX_REPLY_BYTES",
    "Part",
    "encode_message",
    "failure_reply",
    "refusal_reply",
    "reply_outcome",
    "success_reply",
]
