"""The versioned envelope: Request, Progress, Reply and the typed error."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from .errors import BadRequest, ErrorCode, PayloadTooLarge, ShoalError, UnsupportedVersion
from .hostid import HOST_ID_PATTERN
from .selectors import Selector
from .signing import Signature

PROTOCOL_VERSION = 1
"""Version of the envelope. Agents refuse requests with a newer major version."""

MAX_REQUEST_BYTES = 256 * 1024
"""Largest request an agent accepts; larger ones get ``payload_too_large``."""

WIRE_REQUIRED = frozenset({"v", "id", "verb", "issued_at", "ttl", "target"})
"""Fields a request on the wire must carry, though the model has defaults for building."""

DEFAULT_TTL = 60.0
MAX_TTL = 24 * 3600.0

RequestId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
HostId = Annotated[str, Field(pattern=HOST_ID_PATTERN)]
VerbName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]


def new_request_id() -> str:
    """A fresh request id: unique, and the idempotency key of the request."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = Field(default=PROTOCOL_VERSION, ge=1, description="Protocol version.")


def _one_of_host_or_selector(schema: dict[str, Any]) -> None:
    schema["oneOf"] = [
        {"required": ["host"], "properties": {"host": {"type": "string"}}},
        {"required": ["selector"], "properties": {"selector": {"type": "object"}}},
    ]


class Target(BaseModel):
    """A direct request names one host; a broadcast carries a selector."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra=_one_of_host_or_selector
    )

    host: HostId | None = None
    selector: Selector | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Target:
        if (self.host is None) == (self.selector is None):
            raise ValueError("a target names exactly one of 'host' or 'selector'")
        return self

    def matches(self, host_id: str, labels: dict[str, str]) -> bool:
        if self.host is not None:
            return self.host == host_id
        assert self.selector is not None
        return self.selector.matches(host_id, labels)


def _wire_required(schema: dict[str, Any]) -> None:
    """On the wire these fields are required, though the model has defaults for building."""
    schema["required"] = sorted(WIRE_REQUIRED)


class Request(_Message):
    """A request from a controller to one host or to every matching host."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_wire_required)

    kind: Literal["request"] = "request"
    id: RequestId = Field(default_factory=new_request_id)
    verb: VerbName
    args: dict[str, Any] = Field(default_factory=dict)
    sender: str = Field(default="", max_length=256)
    issued_at: AwareDatetime = Field(default_factory=utcnow)
    ttl: float = Field(default=DEFAULT_TTL, gt=0, le=MAX_TTL, description="Seconds.")
    target: Target
    sig: Signature | None = None

    @property
    def expires_at(self) -> datetime:
        return self.issued_at + timedelta(seconds=self.ttl)


class ErrorInfo(BaseModel):
    """A typed error. Unknown codes from newer peers are kept as plain strings."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    code: ErrorCode | str = Field(union_mode="left_to_right")
    message: str
    detail: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_exc(cls, exc: ShoalError) -> ErrorInfo:
        return cls(code=exc.code, message=exc.message, detail=exc.detail)


class Progress(_Message):
    """A progress report on a long request, sent before the final reply."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: Literal["progress"] = "progress"
    id: RequestId
    host: HostId
    seq: int = Field(ge=0)
    phase: str = Field(max_length=64)
    message: str = Field(default="", max_length=4096)
    current: float | None = None
    total: float | None = None


class Reply(_Message):
    """The one final reply of a host to a request."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: Literal["reply"] = "reply"
    id: str
    host: HostId
    ok: bool
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    started_at: AwareDatetime
    duration: float = Field(ge=0, description="Seconds.")

    @model_validator(mode="after")
    def _result_or_error(self) -> Reply:
        if self.ok and self.error is not None:
            raise ValueError("an ok reply carries no error")
        if not self.ok and self.error is None:
            raise ValueError("a failed reply carries an error")
        return self


class _Head(BaseModel):
    """The parts of a request that are read even when the rest is invalid."""

    model_config = ConfigDict(extra="ignore")

    v: Any = None
    id: Any = None


_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def request_head(data: bytes) -> tuple[int | None, str | None]:
    """Best-effort protocol version and request id of a raw request, for error replies.

    Each part is read on its own: a bad version does not hide a good id, nor the reverse.
    """
    try:
        head = _Head.model_validate_json(data)
    except ValidationError:
        return None, None
    version = head.v if type(head.v) is int else None
    request_id = head.id if isinstance(head.id, str) and _REQUEST_ID_RE.fullmatch(head.id) else None
    return version, request_id


def decode_request(data: bytes, *, max_bytes: int = MAX_REQUEST_BYTES) -> Request:
    """Parse and validate a raw request, raising a typed :class:`ShoalError`."""
    return decode_request_document(data, max_bytes=max_bytes)[0]


def decode_request_document(
    data: bytes, *, max_bytes: int = MAX_REQUEST_BYTES
) -> tuple[Request, dict[str, Any]]:
    """The validated request and the JSON object it came from (what a signature covers)."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"request of {len(data)} bytes exceeds the limit of {max_bytes} bytes",
            detail={"size": len(data), "limit": max_bytes},
        )
    version, _ = request_head(data)
    if version is not None and version > PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"protocol version {version} is newer than this agent's {PROTOCOL_VERSION}",
            detail={"supported": [PROTOCOL_VERSION]},
        )
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"malformed request: not JSON ({type(exc).__name__})") from exc
    if not isinstance(document, dict):
        raise BadRequest("malformed request: not a JSON object")
    try:
        request = Request.model_validate(document)
    except ValidationError as exc:
        raise BadRequest(
            "malformed request: " + summarize_validation_error(exc),
            detail={"errors": json_safe_errors(exc)[:10]},
        ) from exc
    absent = WIRE_REQUIRED - request.model_fields_set
    if absent:
        raise BadRequest(f"malformed request: missing {', '.join(sorted(absent))}")
    return request, document


_WIRE_TIME: TypeAdapter[datetime] = TypeAdapter(AwareDatetime)


def wire_time(dt: datetime) -> str:
    """``dt`` in the one RFC 3339 form of the wire: UTC with ``Z``, as replies write their times."""
    written: str = _WIRE_TIME.dump_python(dt.astimezone(UTC), mode="json")
    return written


def json_safe_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """The errors of ``exc`` as plain JSON values (``ctx`` may hold exception objects)."""
    errors: list[dict[str, Any]] = json.loads(exc.json(include_url=False, include_input=False))
    return errors


def summarize_validation_error(exc: ValidationError, limit: int = 3) -> str:
    """One line naming the first few invalid fields."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "message"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def error_reply(
    request_id: str, host: str, exc: ShoalError, *, started_at: datetime, duration: float = 0.0
) -> Reply:
    return Reply(
        id=request_id,
        host=host,
        ok=False,
        error=ErrorInfo.from_exc(exc),
        started_at=started_at,
        duration=duration,
    )


UNKNOWN_REQUEST_ID = "unknown"
"""Request id used in replies to requests whose id could not be read."""
